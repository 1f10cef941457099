"""Command-line pieces shared by several commands: the model to run, device, size and speed
flags. Each turns a bad value into an error that names the flag and the value."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cmt_deeplab.cli.main import UserError
from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.inference.predictor import PRECISIONS
from cmt_deeplab.model_dir import DEFAULT_SIZE, checkpoint_size, dataset_info, load_model_dir
from cmt_deeplab.models.registry import build_model
from cmt_deeplab.utils.allocator import keep_freed_memory
from cmt_deeplab.utils.device import resolve_device
from cmt_deeplab.utils.size import parse_size


def load_model(
    args: argparse.Namespace, device: torch.device | None
) -> tuple[nn.Module, DatasetInfo, int | tuple[int, int]]:
    """The model, its categories and its default canvas, from ``--checkpoint DIR`` or
    ``--model NAME`` (random weights; categories from ``--categories JSON``, else COCO's)."""
    if args.checkpoint:
        if not Path(args.checkpoint).is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {args.checkpoint}")
        model, config = load_model_dir(args.checkpoint, device)
        return model, dataset_info(config), checkpoint_size(config)
    info = DatasetInfo.from_json(args.categories) if args.categories else coco_info()
    # An unknown name raises a ValueError that lists the registered ones.
    model = build_model(args.model, num_classes=info.num_classes,
                                    num_thing_classes=info.num_thing_classes)
    return model, info, DEFAULT_SIZE


def coco_info() -> DatasetInfo:
    """COCO's 133 categories, the default of a randomly initialised ``--model``."""
    from cmt_deeplab.data import metadata

    coco = getattr(metadata, "coco_panoptic_info", None)
    if coco is None:
        raise UserError("no COCO category list is bundled in this version; "
                        "pass --categories JSON (e.g. COCO's panoptic_coco_categories.json)")
    return coco()


def parse_device(name: str | None) -> torch.device | None:
    """``--device``: ``None`` (the Predictor's default) or a checked torch device."""
    if name is None:
        return None
    try:
        return resolve_device(name, "--device")
    except ValueError as error:
        raise UserError(str(error)) from None


def keep_freed_memory_on_cpu(device: torch.device) -> None:
    """A command that runs many forwards on the CPU lets glibc keep freed blocks for the next
    one instead of page-faulting them back in (``utils.allocator``): the inference copies of
    CMT-S and MaX-S at 800x1200 took 0.81x the time (``benchmarks/cmt_efficiency.py``,
    ``fused+keep``). Peak memory is unchanged; freed memory stays with the process."""
    if device.type == "cpu":
        keep_freed_memory()


def size_argument(flag: str) -> Callable[[str], list[int]]:
    """An argparse ``type`` for ``S`` or ``HxW`` flags: ``[H, W]``."""

    def parse(text: str) -> list[int]:
        try:
            return list(parse_size(text, flag))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision`` and ``--compile``, shared by ``predict`` and ``evaluate``."""
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                        help="autocast precision (bf16/fp16 on CUDA; bf16 also on recent CPUs)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (falls back to eager if compiling fails)")

