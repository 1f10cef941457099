"""Where a dataset split is, and the one function that opens it.

A user names a split either by a root and a split name (COCO layout ``ROOT/NAME`` +
``ROOT/annotations/panoptic_NAME[.json]``, or a Cityscapes root with its gtFine panoptic
export: detected), or by its three paths (image folder, annotation JSON, panoptic PNG folder).
The training config (``data.root`` + ``data.train_split``, or ``data.train_images`` ...) and
the command-line flags (``--data ROOT --split NAME``, or ``--images ...``) both describe a
``SplitSource``; ``open_split`` opens it, and its errors name the settings as the user wrote
them (``spelling``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmt_deeplab.data.cityscapes import CityscapesPanopticDataset, is_cityscapes_root
from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset, resolve_split

#: The fields of a split given by its paths, in ``CocoPanopticDataset``'s argument order.
PATH_FIELDS = ("images", "annotations", "panoptic_dir")


@dataclass(frozen=True)
class SplitSource:
    """A split as the user named it: ``root`` + ``split``, or the three paths."""

    root: str | Path | None = None
    split: str | None = None
    images: str | Path | None = None
    annotations: str | Path | None = None
    panoptic_dir: str | Path | None = None

    @property
    def given(self) -> bool:
        """Whether a split name or any path was given (a root alone names no split)."""
        return self.split is not None or any(getattr(self, f) is not None for f in PATH_FIELDS)


def open_split(
    source: SplitSource, spelling: Mapping[str, str], **kwargs: Any
) -> CocoPanopticDataset:
    """The dataset ``source`` names; ``kwargs`` go to the dataset class.

    Args:
        source: root + split name, or the three paths.
        spelling: how the user wrote each field of ``source`` (``{"root": "--data ROOT",
            "split": "--split NAME", "images": "--images", ...}``), for the errors.

    Raises:
        ValueError: both forms, a split name without a root, some paths but not all, a root
            without a split name, or nothing at all, naming the settings.
    """
    paths = [getattr(source, field) for field in PATH_FIELDS]
    named = [spelling[field] for field in PATH_FIELDS]
    if source.split is not None and any(p is not None for p in paths):
        raise ValueError(f"give either {spelling['root']} with {spelling['split']} or "
                         f"{', '.join(named)}, not both")
    if source.split is not None:
        if source.root is None:
            raise ValueError(f"{spelling['split']} needs {spelling['root']}")
        return open_dataset(source.root, source.split, **kwargs)
    if any(p is not None for p in paths):
        missing = [name for name, p in zip(named, paths, strict=True) if p is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing: {', '.join(named)} go together")
        return CocoPanopticDataset(*(Path(p) for p in paths), **kwargs)
    if source.root is not None:
        raise ValueError(f"{spelling['root']} needs {spelling['split']}")
    raise ValueError(f"no dataset given: use {spelling['root']} {spelling['split']} or "
                     f"{' '.join(f'{name} ...' for name in named)}")


def open_dataset(root: str | Path, split: str, **kwargs: Any) -> CocoPanopticDataset:
    """Split ``split`` under ``root``: Cityscapes when its panoptic export is there, else COCO."""
    if is_cityscapes_root(root, split):
        return CityscapesPanopticDataset(root, split, **kwargs)
    return CocoPanopticDataset(*resolve_split(root, split), **kwargs)
