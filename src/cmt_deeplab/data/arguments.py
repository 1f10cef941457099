"""Command-line data options shared by every command that reads a dataset.

A command calls ``add_data_arguments(parser)`` and later ``dataset_from_args(args)``; the user
then names a split either by root and name (COCO or Cityscapes layout, detected)::

    --data ROOT --split NAME

or by its three paths::

    --images DIR --annotations JSON --panoptic-dir DIR

Commands with several splits pass their own split flags, e.g.
``split_flags=("--train-split", "--val-split")``: each gets its path triple with the same
prefix (``--train-images``, ``--train-annotations``, ``--train-panoptic-dir``), and
``dataset_from_args(args, "--val-split")`` builds that one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cmt_deeplab.data.cityscapes import CityscapesPanopticDataset, is_cityscapes_root
from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset, resolve_split


def add_data_arguments(
    parser: argparse.ArgumentParser, split_flags: tuple[str, ...] = ("--split",)
) -> None:
    """Adds ``--data``, ``--skip-bad`` and, per split flag, the flag and its path triple."""
    group = parser.add_argument_group("data")
    group.add_argument("--data", metavar="ROOT", type=Path,
                       help="dataset root (COCO layout ROOT/NAME + ROOT/annotations/panoptic_NAME"
                            "[.json], or a Cityscapes root with the gtFine panoptic export)")
    for flag in split_flags:
        prefix = _prefix(flag)
        group.add_argument(flag, metavar="NAME", help="split name under --data, e.g. val2017")
        group.add_argument(f"--{prefix}images", metavar="DIR", type=Path,
                           help=f"image folder (instead of --data/{flag})")
        group.add_argument(f"--{prefix}annotations", metavar="JSON", type=Path,
                           help="COCO panoptic annotation JSON")
        group.add_argument(f"--{prefix}panoptic-dir", metavar="DIR", type=Path,
                           help="folder of the panoptic PNGs")
    group.add_argument("--skip-bad", action="store_true",
                       help="skip images with bad annotations (with a warning) instead of failing")


def dataset_from_args(
    args: argparse.Namespace, split_flag: str = "--split", required: bool = True, **kwargs: Any
) -> CocoPanopticDataset | None:
    """The dataset the user named for ``split_flag``; ``kwargs`` go to the dataset class.

    Returns ``None`` when nothing was given for an optional split (``required=False``).
    """
    prefix = _prefix(split_flag)
    dest = prefix.replace("-", "_")
    split = getattr(args, split_flag.lstrip("-").replace("-", "_"))
    paths = [getattr(args, f"{dest}{name}") for name in ("images", "annotations", "panoptic_dir")]
    flags = [f"--{prefix}{name}" for name in ("images", "annotations", "panoptic-dir")]
    kwargs.setdefault("skip_bad", getattr(args, "skip_bad", False))
    if split is not None and any(p is not None for p in paths):
        raise ValueError(f"give either --data ROOT {split_flag} NAME or {', '.join(flags)}, "
                         "not both")
    if split is not None:
        if args.data is None:
            raise ValueError(f"{split_flag} needs --data ROOT")
        return open_dataset(args.data, split, **kwargs)
    if any(p is not None for p in paths):
        missing = [flag for flag, p in zip(flags, paths, strict=True) if p is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing: {', '.join(flags)} go together")
        return CocoPanopticDataset(*paths, **kwargs)
    if required and args.data is not None:
        raise ValueError(f"--data ROOT needs {split_flag} NAME")
    if required:
        raise ValueError(f"no dataset given: use --data ROOT {split_flag} NAME or "
                         f"{' '.join(f'{f} ...' for f in flags)}")
    return None


def open_dataset(root: str | Path, split: str, **kwargs: Any) -> CocoPanopticDataset:
    """Split ``split`` under ``root``: Cityscapes when its panoptic export is there, else COCO."""
    if is_cityscapes_root(root, split):
        return CityscapesPanopticDataset(root, split, **kwargs)
    return CocoPanopticDataset(*resolve_split(root, split), **kwargs)


def _prefix(split_flag: str) -> str:
    """``--split`` -> ``""``; ``--train-split`` -> ``"train-"``."""
    name = split_flag.lstrip("-")
    if name == "split":
        return ""
    if not name.endswith("-split"):
        raise ValueError(f"split flags must be '--split' or end in '-split', got {split_flag!r}")
    return name[: -len("split")]
