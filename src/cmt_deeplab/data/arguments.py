"""Command-line data options shared by every command that reads a dataset.

A command calls ``add_data_arguments(parser)`` and later ``dataset_from_args(args)`` (which
opens the split with ``data.splits.open_split``); the user then names a split either by root
and name (COCO or Cityscapes layout, detected)::

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

from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset
from cmt_deeplab.data.splits import PATH_FIELDS, SplitSource, open_split


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


def split_from_args(
    args: argparse.Namespace, split_flag: str = "--split"
) -> tuple[SplitSource, dict[str, str]]:
    """The split the user named with ``split_flag`` and its path triple, and how each of its
    fields is spelled on the command line (for ``open_split``'s errors)."""
    prefix = _prefix(split_flag)
    dest = prefix.replace("-", "_")
    source = SplitSource(
        root=args.data, split=getattr(args, split_flag.lstrip("-").replace("-", "_")),
        **{field: getattr(args, f"{dest}{field}") for field in PATH_FIELDS},
    )
    spelling = {"root": "--data ROOT", "split": f"{split_flag} NAME"}
    spelling |= {field: f"--{prefix}{field.replace('_', '-')}" for field in PATH_FIELDS}
    return source, spelling


def dataset_from_args(
    args: argparse.Namespace, split_flag: str = "--split", required: bool = True, **kwargs: Any
) -> CocoPanopticDataset | None:
    """The dataset the user named for ``split_flag``; ``kwargs`` go to the dataset class.

    Returns ``None`` when nothing was given for an optional split (``required=False``).
    """
    source, spelling = split_from_args(args, split_flag)
    if not required and not source.given:
        return None
    kwargs.setdefault("skip_bad", getattr(args, "skip_bad", False))
    return open_split(source, spelling, **kwargs)


def _prefix(split_flag: str) -> str:
    """``--split`` -> ``""``; ``--train-split`` -> ``"train-"``."""
    name = split_flag.lstrip("-")
    if name == "split":
        return ""
    if not name.endswith("-split"):
        raise ValueError(f"split flags must be '--split' or end in '-split', got {split_flag!r}")
    return name[: -len("split")]
