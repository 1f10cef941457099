"""Multiply-accumulate counts with torch's own ``FlopCounterMode``.

The paper's "FLOPs" are MACs (fact sheet §0): convolutions, linear projections, attention
matmuls and mask logits; BN, softmax and resizing are not counted. ``FlopCounterMode`` counts
exactly the matmul-like ops (mm/addmm/bmm/conv/SDPA) and reports FLOPs = 2 x MACs.

Counting runs on the ``meta`` device: shapes only, no memory, so a 1200x800 count of a
270M-parameter model takes seconds and no RAM.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(
    build: Callable[[], nn.Module], height: int, width: int, batch_size: int = 1
) -> int:
    """MACs of one eval-mode forward of ``build()`` on a ``[B, 3, H, W]`` input.

    ``build`` is called under the meta device so no weights are allocated.
    """
    with torch.device("meta"):
        model = build()
    _freeze(model)
    images = torch.empty(batch_size, 3, height, width, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images)
    return counter.get_total_flops() // 2


def count_macs_by_module(
    build: Callable[[], nn.Module], height: int, width: int, depth: int = 2
) -> dict[str, int]:
    """MACs per module name (up to ``depth`` levels), for finding where the cost is."""
    with torch.device("meta"):
        model = build()
    _freeze(model)
    images = torch.empty(1, 3, height, width, device="meta")
    counter = FlopCounterMode(display=False, depth=depth)
    with torch.no_grad(), counter:
        model(images)
    return {name: sum(v.values()) // 2 for name, v in counter.get_flop_counts().items()}


def _freeze(model: nn.Module) -> None:
    # Eval mode, counted under no_grad as users count (no autograd graph on the meta device).
    model.eval()
