"""``convert_deeplab2``: a deeplab2 checkpoint -> one of our models, and optionally a model
directory (``model.safetensors``, ``config.yaml``, ``conversion.json``) that ``predict``,
``evaluate``, ``visualize`` and ``cmt_deeplab.load_model`` read.

The model is built with the checkpoint's own class and slot counts (from the class head and
the memory table) unless they are given; a backbone-only conversion takes any class set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmt_deeplab.convert.archives import Archive, resolve_checkpoint
from cmt_deeplab.convert.converter import (
    ConversionReport,
    canonical_names,
    convert_state_dict,
    mismatch_error,
    plan_conversion,
)
from cmt_deeplab.convert.tf_bundle import TFCheckpoint
from cmt_deeplab.utils.io import current_umask

CONVERSION_FILE = "conversion.json"
#: COCO panoptic: deeplab2's class head predicts these many classes plus void.
COCO_CLASSES, COCO_THINGS = 133, 80


def checkpoint_head_sizes(names: dict[str, str], source: Any) -> dict[str, int]:
    """Classes and slots the checkpoint's heads were trained with (full MaX checkpoints)."""
    sizes: dict[str, int] = {}
    bias = names.get("transformer_class_head/_conv/bias")
    if bias is not None:
        sizes["num_classes"] = int(np.shape(source[bias])[0]) - 1  # last = void
    memory = names.get("encoder/memory_feature")
    if memory is not None:
        sizes["num_slots"] = int(np.shape(source[memory])[1])
    return sizes


def build_for_checkpoint(
    source: Any,
    model_name: str,
    num_classes: int | None = None,
    num_thing_classes: int | None = None,
    backbone_only: bool = False,
    **overrides: Any,
) -> nn.Module:
    """``build_model(model_name, ...)`` with the checkpoint's class and slot counts by default."""
    from cmt_deeplab.models.registry import build_model

    sizes = {} if backbone_only else checkpoint_head_sizes(canonical_names(source), source)
    classes = num_classes if num_classes is not None else sizes.get("num_classes", COCO_CLASSES)
    if num_thing_classes is None:
        if classes != COCO_CLASSES:
            raise ValueError(f"{classes} classes is not COCO's 133: give num_thing_classes "
                             "(--num-thing-classes) too")
        num_thing_classes = COCO_THINGS
    if "num_slots" not in overrides and "num_slots" in sizes:
        overrides["num_slots"] = sizes["num_slots"]
    return build_model(model_name, num_classes=classes, num_thing_classes=num_thing_classes,
                       **overrides)


def convert_deeplab2(
    checkpoint: str | Path,
    model_name: str,
    out: str | Path | None = None,
    *,
    num_classes: int | None = None,
    num_thing_classes: int | None = None,
    backbone_only: bool = False,
    categories: str | Path | None = None,
    crop: int | None = None,
    overrides: dict[str, Any] | None = None,
    strict: bool = True,
    overwrite: bool = False,
    cache: Path | None = None,
    url: str | None = None,
) -> tuple[nn.Module, ConversionReport]:
    """Converts a deeplab2 checkpoint into ``model_name`` (eval mode); writes ``out`` if given.

    Args:
        checkpoint: prefix, folder, ``.tar.gz`` or a name of ``archives.ARCHIVES``.
        model_name: a registered model (``max-deeplab-s``, ``cmt-deeplab-s``, ...).
        out: the model directory to write (atomically: a temporary sibling renamed at the end).
        num_classes / num_thing_classes: the class set (default: the checkpoint's; COCO).
        backbone_only: take the encoder only (ImageNet backbones, or a COCO model's encoder).
        categories: a COCO-style categories JSON naming the classes (default: COCO's when
            there are 133, else ``class_1`` ...).
        crop: the training crop recorded in ``config.yaml`` (default: the archive's, else 641).
        overrides: more ``build_model`` keyword arguments (widths of a non-standard network).
        strict: see ``convert_state_dict``.
        overwrite: replace an existing ``out``.
        cache / url: see ``archives.resolve_checkpoint``.

    Returns:
        ``(model, report)``.
    """
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(f"{out} exists; choose another --out or pass --overwrite")
    prefix, archive = resolve_checkpoint(checkpoint, cache, url)
    if archive is not None and archive.backbone_only and not backbone_only:
        raise ValueError(f"{checkpoint} is an ImageNet backbone: convert it with --backbone-only")
    source = TFCheckpoint(prefix)
    overrides = dict(overrides or {})
    num_classes = overrides.pop("num_classes", num_classes)
    num_thing_classes = overrides.pop("num_thing_classes", num_thing_classes)
    build = partial(build_for_checkpoint, source, model_name, num_classes, num_thing_classes,
                    backbone_only, **overrides)
    # Names and shapes first, on a model without storage: a checkpoint that does not fit fails
    # in seconds, before a large model is built and its weights are read.
    with torch.device("meta"):
        matches, planned, missing, mismatched = plan_conversion(source, build(), backbone_only)
    if strict and (missing or mismatched):
        raise mismatch_error(str(prefix), planned.model, missing, mismatched,
                             len(matches) + len(missing) + len(mismatched))
    model = build()
    state, report = convert_state_dict(source, model, backbone_only, strict, str(prefix))
    model.load_state_dict(state, strict=True)
    model.eval()
    if out is not None:
        write_model_dir(out, model, report, _dataset_info(model, categories),
                        crop or (archive.crop if archive else 641), checkpoint, archive)
    return model, report


def _dataset_info(model: nn.Module, categories: str | Path | None):
    from cmt_deeplab.data.metadata import Category, DatasetInfo, coco_panoptic_info
    from cmt_deeplab.models import model_spec

    spec = model_spec(model).kwargs
    classes, things = spec["num_classes"], spec["num_thing_classes"]
    if categories is not None:
        info = DatasetInfo.from_json(categories)
        if (info.num_classes, info.num_thing_classes) != (classes, things):
            raise ValueError(f"{categories} lists {info.num_classes} classes "
                             f"({info.num_thing_classes} things); the model has {classes} "
                             f"({things})")
        return info
    if (classes, things) == (COCO_CLASSES, COCO_THINGS):
        return coco_panoptic_info()
    return DatasetInfo([Category(i + 1, f"class_{i + 1}", i < things) for i in range(classes)],
                       name="unnamed")


def write_model_dir(
    out: Path,
    model: nn.Module,
    report: ConversionReport,
    info: Any,
    crop: int,
    checkpoint: str | Path,
    archive: Archive | None,
) -> Path:
    """``model.safetensors`` + ``config.yaml`` + ``conversion.json``, all or nothing."""
    from cmt_deeplab.model_dir import save_model_dir

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 is not what a model directory needs
    try:
        source = {"format": "deeplab2", "checkpoint": str(checkpoint), "step": report.step,
                  "backbone_only": report.backbone_only}
        if archive is not None:
            source.update(url=archive.url, note=archive.note)
        save_model_dir(tmp, model, {"data": info, "input": {"crop": [crop, crop],
                                                           "eval_size": [crop, crop]},
                                    "converted_from": source})
        (tmp / CONVERSION_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
