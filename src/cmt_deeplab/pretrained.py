"""Pretrained starts: weights of another model loaded into a freshly built one.

    model = cmt_deeplab.build_model("cmt-deeplab-s", num_classes=19, num_thing_classes=8,
                                    pretrained="max_deeplab_s_backbone_imagenet1k")
    report = load_pretrained(model, "runs/synthetic", backbone_only=True)   # in place
    print(report.table())

A source is a model directory (what ``train`` and ``convert`` write, or a training-state step
directory), a ``.safetensors`` file, a deeplab2 checkpoint (prefix, folder or ``.tar.gz``) or
the name of a published one (``convert.archives.ARCHIVES``: fetched once, converted in memory).

The rules, as timm's ``pretrained=True`` and HF's ``from_pretrained`` behave:

- **Whole model** (default): every tensor of the model must come from the source with its
  shape. The tensors whose shape follows the class count (the class heads of every layer and
  the semantic classifier) keep their fresh initialisation when the source predicts another
  class set, and are listed as new: fine-tuning on new classes rebuilds the class head and
  keeps the rest. Anything else that does not fit is an error naming the tensors
  (``strict=False`` lists it as skipped instead).
- **Backbone only**: the pixel encoder's tensors (``backbone.*``) are taken, under whatever
  prefix the source holds them (``net1.backbone.*`` of a recursive network included); encoder
  tensors the source lacks (the stages a deeper encoder adds) and the rest of the model stay
  freshly initialised and are listed as new. A source with no encoder tensor that fits is an
  error: it is a checkpoint of another model.

Source tensors nothing took are listed as unused. ``report.loaded`` names the pretrained
tensors, which the trainer's backbone learning-rate multiplier applies to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmt_deeplab.convert.archives import ARCHIVES
from cmt_deeplab.convert.deeplab2 import CONVERSION_FILE, convert_deeplab2
from cmt_deeplab.model_dir import (
    CONFIG_FILE,
    DIGEST_KEY,
    MODEL_FILE,
    read_model_config,
    read_safetensors,
    unwrap_model,
)
from cmt_deeplab.models.registry import build_model as build_registered_model
from cmt_deeplab.models.registry import model_spec

logger = logging.getLogger(__name__)

#: The pixel encoder's module name inside every model (and inside each net of an RFN).
BACKBONE = "backbone."


@dataclass
class PretrainedReport:
    """What ``load_pretrained`` did, tensor by tensor (``to_dict()`` is ``pretrained.json``)."""

    source: str
    backbone_only: bool
    #: Model tensor -> the source tensor it took.
    loaded: dict[str, str] = field(default_factory=dict)
    #: Model tensor -> why it kept its fresh initialisation.
    new: dict[str, str] = field(default_factory=dict)
    #: Model tensor -> why a source tensor of that name was not taken (``strict=False``).
    skipped: dict[str, str] = field(default_factory=dict)
    #: Source tensors nothing took.
    unused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        counts = {key: len(getattr(self, key)) for key in ("loaded", "new", "skipped", "unused")}
        return {"counts": counts, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PretrainedReport:
        return cls(str(data["source"]), bool(data["backbone_only"]), dict(data["loaded"]),
                   dict(data["new"]), dict(data["skipped"]), list(data["unused"]))

    def table(self, model: nn.Module | None = None) -> str:
        """Loaded / new / skipped tensors per module (two name levels), then the reasons."""
        sizes = ({k: v.numel() for k, v in unwrap_model(model).state_dict().items()}
                 if model is not None else {})
        rows: dict[str, list[int]] = {}
        for column, names in enumerate((self.loaded, self.new, self.skipped)):
            for name in names:
                module = (_module_of(name) if not self.backbone_only or _in_encoder(name)
                          else "(outside the pixel encoder)")
                row = rows.setdefault(module, [0, 0, 0, 0])
                row[column] += 1
                if column == 0:
                    row[3] += sizes.get(name, 0)
        width = max([len("module"), *map(len, rows)])
        lines = [f"pretrained start from {self.source}"
                 + (" (backbone only)" if self.backbone_only else ""),
                 f"  {'module':<{width}} {'loaded':>7} {'new':>6} {'skipped':>8}"
                 + (f" {'loaded values':>14}" if sizes else "")]
        for module in sorted(rows):
            loaded, new, skipped, values = rows[module]
            lines.append(f"  {module:<{width}} {loaded:7d} {new:6d} {skipped:8d}"
                         + (f" {values:14,d}" if sizes else ""))
        total = [len(self.loaded), len(self.new), len(self.skipped)]
        lines.append(f"  {'total':<{width}} {total[0]:7d} {total[1]:6d} {total[2]:8d}"
                     + (f" {sum(sizes.get(n, 0) for n in self.loaded):14,d}" if sizes else ""))
        for title, reasons in (("new", self.new), ("skipped", self.skipped)):
            counts: dict[str, int] = {}
            for reason in reasons.values():
                counts[reason] = counts.get(reason, 0) + 1
            lines += [f"  {title}: {count} x {reason}" for reason, count in counts.items()]
        if self.unused:
            lines.append(f"  unused source tensors: {len(self.unused)}, e.g. {self.unused[:3]}")
        return "\n".join(lines)


def build_model(
    name: str,
    *,
    pretrained: str | Path | None = None,
    pretrained_backbone_only: bool | None = None,
    pretrained_strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """``models.build_model(name, **kwargs)``, then the weights of ``pretrained`` if given.

    Args:
        pretrained: a model directory, ``.safetensors`` file, deeplab2 checkpoint or
            published checkpoint name (see the module notes).
        pretrained_backbone_only: take the pixel encoder only (default: only for the
            published ImageNet backbones).
        pretrained_strict: see ``load_pretrained``.
        kwargs: ``num_classes``, ``num_thing_classes``, ``num_slots`` and config overrides.
    """
    model = build_registered_model(name, **kwargs)
    if pretrained is not None:
        report = load_pretrained(model, pretrained, pretrained_backbone_only,
                                 pretrained_strict)
        logger.info("%s", report.table(model))
    return model


def load_pretrained(
    model: nn.Module,
    source: str | Path,
    backbone_only: bool | None = None,
    strict: bool = True,
) -> PretrainedReport:
    """Loads ``source`` into ``model`` in place under the module notes' rules.

    Args:
        model: a model from ``build_model`` (possibly wrapped).
        source: see the module notes.
        backbone_only: the pixel encoder only; ``None``: only for a published backbone.
        strict: tensors that do not fit are an error (``False``: skipped and listed).

    Returns:
        The report; nothing is loaded when it raises.

    Raises:
        FileNotFoundError / ValueError: naming the source and the tensors that do not fit.
    """
    model = unwrap_model(model)
    archive = ARCHIVES.get(str(source))
    if backbone_only is None:
        backbone_only = archive is not None and archive.backbone_only
    elif archive is not None and archive.backbone_only and not backbone_only:
        raise ValueError(f"{source} is an ImageNet backbone: load it with backbone_only "
                         "(--backbone-only)")
    state, label = read_pretrained_state(source, model, backbone_only)
    report = plan_pretrained(model, state, label, backbone_only, strict)
    targets = model.state_dict()
    with torch.no_grad():
        for name, key in report.loaded.items():
            targets[name].copy_(state[key])
    return report


def read_pretrained_state(
    source: str | Path, model: nn.Module, backbone_only: bool
) -> tuple[dict[str, torch.Tensor], str]:
    """The source's tensors, named as in our models, and a label for messages."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        return read_safetensors(path), str(path)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        # The weights digest its config.yaml recorded at save time (older directories: none).
        config = read_model_config(path / CONFIG_FILE) if (path / CONFIG_FILE).is_file() else {}
        state = read_safetensors(path / MODEL_FILE, config.get(DIGEST_KEY))
        return _without_unconverted(state, path / CONVERSION_FILE), str(path)
    if text in ARCHIVES or _is_tf_checkpoint(path):
        return _converted_state(text, model, backbone_only), text
    if path.exists():
        raise ValueError(
            f"pretrained source {path} is neither a model directory ({MODEL_FILE} + "
            "config.yaml), a .safetensors file nor a deeplab2 checkpoint")
    raise FileNotFoundError(
        f"pretrained source not found: {text} (neither a path nor a published checkpoint "
        f"name; names: {', '.join(ARCHIVES)})")


def plan_pretrained(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    label: str,
    backbone_only: bool,
    strict: bool = True,
) -> PretrainedReport:
    """Which model tensor takes which source tensor; raises where ``strict`` rules fail."""
    targets = unwrap_model(model).state_dict()
    report = PretrainedReport(label, backbone_only)
    class_sized = class_dependent_tensors(model) if not backbone_only else set()
    misfits: list[str] = []
    taken: set[str] = set()
    encoder_keys = _encoder_index(state) if backbone_only else {}
    for name, tensor in targets.items():
        if backbone_only and not _in_encoder(name):
            report.new[name] = "not in the pixel encoder"
            continue
        key = name if name in state else encoder_keys.get(_encoder_suffix(name))
        if key is None:
            if backbone_only:
                report.new[name] = "the source's encoder lacks it"
            else:
                misfits.append(f"{name}: missing in the source")
            continue
        if tuple(state[key].shape) == tuple(tensor.shape):
            report.loaded[name] = key
            taken.add(key)
        elif name in class_sized:
            report.new[name] = "class set differs (re-initialised)"
            taken.add(key)
        else:
            misfits.append(f"{name}: source {tuple(state[key].shape)} vs model "
                           f"{tuple(tensor.shape)}")
    report.unused = sorted(set(state) - taken)
    if not backbone_only:
        misfits += [f"{key}: not in the model" for key in report.unused if key not in targets]
    if misfits and strict:
        hint = ("an encoder of another architecture?" if backbone_only else
                "a checkpoint of another model? pass --backbone-only for its pixel encoder,")
        raise ValueError(
            f"{label} does not fit {model_spec(unwrap_model(model)).name}: {len(misfits)} "
            f"tensor(s), e.g. {misfits[:6]} ({hint} or --set init.strict=false to skip these)")
    for entry in misfits:
        name, _, reason = entry.partition(": ")
        if name in targets:
            report.skipped[name] = reason
    if not report.loaded:
        raise ValueError(f"{label}: no tensor fits {model_spec(unwrap_model(model)).name}"
                         + (" (no pixel-encoder tensor of its shapes)" if backbone_only else ""))
    return report


def class_dependent_tensors(model: nn.Module) -> set[str]:
    """The tensors whose shape follows ``num_classes`` (found by building, without storage,
    the same model with one class more)."""
    model = unwrap_model(model)
    spec = model_spec(model)
    kwargs = dict(spec.kwargs)
    kwargs["num_classes"] = int(kwargs.get("num_classes", 133)) + 1
    with torch.device("meta"):
        other = build_registered_model(spec.name, **kwargs).state_dict()
    own = model.state_dict()
    return {name for name, tensor in other.items()
            if name in own and tuple(tensor.shape) != tuple(own[name].shape)}


def _in_encoder(name: str) -> bool:
    return f".{BACKBONE}" in f".{name}"


def _encoder_suffix(name: str) -> str | None:
    """``net1.backbone.stem.conv.weight`` -> ``backbone.stem.conv.weight`` (None outside)."""
    return BACKBONE + f".{name}".split(f".{BACKBONE}", 1)[1] if _in_encoder(name) else None


def _encoder_index(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Encoder suffix -> source key; a plain ``backbone.*`` key wins over a prefixed one, and
    of a recursive network's two encoders the first (``net1``) does."""
    index: dict[str, str] = {}
    for key in sorted(state, key=lambda k: (k.count("."), k)):
        suffix = _encoder_suffix(key)
        if suffix is not None:
            index.setdefault(suffix, key)
    return index


def _module_of(name: str) -> str:
    parts = name.split(".")
    depth = 3 if parts[0] in ("net1", "net2") else 2
    return ".".join(parts[:depth]) if len(parts) > depth else ".".join(parts[:-1]) or name


def _is_tf_checkpoint(path: Path) -> bool:
    text = str(path)
    return (Path(f"{text}.index").is_file() or text.endswith((".tar.gz", ".tgz"))
            or (path.is_dir() and any(path.glob("*.index"))))


def _without_unconverted(
    state: dict[str, torch.Tensor], conversion: Path
) -> dict[str, torch.Tensor]:
    """A converted model directory's tensors less those its checkpoint did not fill."""
    if not conversion.is_file():
        return state
    try:
        new = {record["tensor"] for record in json.loads(conversion.read_text())["new"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read {conversion}: {error}") from None
    return {key: value for key, value in state.items() if key not in new}


def _converted_state(
    checkpoint: str, model: nn.Module, backbone_only: bool
) -> dict[str, torch.Tensor]:
    """A deeplab2 checkpoint converted in memory into this model's architecture."""
    spec = model_spec(unwrap_model(model))
    overrides = {k: v for k, v in spec.kwargs.items()
                 if k not in ("num_classes", "num_thing_classes", "num_slots")}
    sizes = ({"num_classes": spec.kwargs["num_classes"],
              "num_thing_classes": spec.kwargs["num_thing_classes"]} if backbone_only else {})
    converted, report = convert_deeplab2(checkpoint, spec.name, backbone_only=backbone_only,
                                         overrides=overrides or None, **sizes)
    new = {record["tensor"] for record in report.new}
    return {key: value for key, value in converted.state_dict().items() if key not in new}
