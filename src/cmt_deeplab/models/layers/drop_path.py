"""Stochastic depth with a per-sample mask, as deeplab2's ``drop_path``."""

from __future__ import annotations

import math

import torch
from torch import nn


class DropPath(nn.Module):
    """Drops a residual branch per sample with probability ``1 - keep_prob``.

    Kept branches are scaled by ``1 / keep_prob`` so the expectation is unchanged.
    Works on any tensor whose first axis is the batch.
    """

    def __init__(self, keep_prob: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(f"drop-path keep probability must be in (0, 1], got {keep_prob}")
        self.keep_prob = keep_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.keep_prob == 1.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(self.keep_prob)
        return x * mask / self.keep_prob

    def extra_repr(self) -> str:
        return f"keep_prob={self.keep_prob}"


def drop_path_keep_prob(
    keep_prob_last_stage: float, schedule: str, stride: int, beyond_stride: int
) -> float:
    """Keep probability of a block at original-ResNet stride ``stride`` (deeplab2 rules).

    ``constant``: the same keep probability for every block at ``stride >= beyond_stride``;
    ``linear``: 1 - (1 - keep) * stage / 4 with stage = log2(stride) - 1.
    """
    if beyond_stride <= 0 or stride < beyond_stride:
        return 1.0
    if schedule == "constant":
        return keep_prob_last_stage
    if schedule == "linear":
        stage = round(math.log2(stride)) - 1
        return 1.0 - (1.0 - keep_prob_last_stage) * stage / 4
    raise ValueError(f"unknown drop-path schedule {schedule!r}; expected constant or linear")
