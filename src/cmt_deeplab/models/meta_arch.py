"""What every panoptic model of this library shares: input checks, the learnable slots
(memory / cluster centres), the auxiliary semantic branch and the output contract.

Input: ``images [B, 3, H, W]`` float, normalised as deeplab2 does, ``pixel / 127.5 - 1``
(use :func:`normalize_images` on ``[0, 255]`` images). Any H and W work; masks come out at
``ceil(H / 4) x ceil(W / 4)``. Crops of size ``32k + 1`` keep every stride corner-aligned,
as in the paper's training.

Output: a dict with ``pred_logits [B, N, K+1]`` (last = void), ``pred_masks [B, N, h, w]``
(logits; softmax over N), ``pixel_feature [B, D, h, w]`` (L2-normalised), in training mode
``semantic_logits [B, K, h, w]``, and ``aux_outputs`` (a list of dicts with the same keys, one
per transformer layer but the last, deep supervision). With ``return_maps=True``: ``maps``,
one dict per layer with ``attention [B, N, h_l, w_l]`` (cross-attention over pixels averaged
over heads) and for CMT layers ``clustering [B, N, h_l, w_l]`` (soft assignment).
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.models.layers.init import trunc_normal_

#: Parameter-name prefixes that deeplab2 leaves out of its counts (training-only branch).
EXCLUDED_FROM_PAPER_COUNT = ("semantic_head.",)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``[0, 255]`` images (uint8 or float) -> the model's input range ``[-1, 1]``."""
    return images.float() / 127.5 - 1.0


def check_images(images: torch.Tensor) -> None:
    """Raises a ``ValueError`` naming the problem for inputs the model cannot take."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise ValueError(
            f"images must have 3 channels (RGB) in dim 1, got {images.shape[1]} "
            f"(shape {tuple(images.shape)}); convert grayscale/RGBA to RGB first"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point normalised to [-1, 1] (pixel / 127.5 - 1), got "
            f"dtype {images.dtype}; use cmt_deeplab.models.normalize_images"
        )
    if images.shape[-2] < 2 or images.shape[-1] < 2:
        raise ValueError(f"images are too small: {tuple(images.shape)}")
    # Shape-only runs (MAC counting) have no values to check; an exported graph cannot hold
    # a data-dependent Python branch (its runtime checks its inputs itself).
    if images.is_meta or torch.compiler.is_exporting():
        return
    if not torch.isfinite(images).all():
        bad = (~torch.isfinite(images)).sum().item()
        raise ValueError(f"images contain {bad} NaN or infinite values")


def slot_table_rows(num_slots: int, max_num_slots: int | None = None) -> int:
    """Rows of the slot table for ``num_slots`` slots in use: ``max(num_slots, max_num_slots)``.

    A table may hold more rows than a model uses (``max_num_slots``), so that the slot count
    can change without changing the parameter shape. Raises for ``num_slots < 1``.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be positive, got {num_slots}")
    return max(num_slots, max_num_slots or 0)


class SlotTable(nn.Module):
    """The learnable ``[max_slots, C]`` table of slots (MaX memory / CMT cluster centres)."""

    def __init__(self, num_slots: int, channels: int, max_slots: int | None = None) -> None:
        super().__init__()
        max_slots = slot_table_rows(num_slots, max_slots)
        self.num_slots = num_slots
        self.weight = nn.Parameter(trunc_normal_(torch.empty(max_slots, channels), 1.0))

    def forward(self, batch_size: int) -> torch.Tensor:
        """``-> [B, N, C]``."""
        # Without autograd, a view of the Parameter would claim requires_grad with no grad_fn,
        # which hooks on module outputs (FlopCounterMode's module tracker) cannot attach to.
        weight = self.weight if torch.is_grad_enabled() else self.weight.detach()
        return weight[: self.num_slots].unsqueeze(0).expand(batch_size, -1, -1)


def count_parameters(model: nn.Module, paper: bool = False) -> int:
    """Trainable parameters; ``paper=True`` leaves out the auxiliary semantic branch."""
    total = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if paper and any(part.startswith(EXCLUDED_FROM_PAPER_COUNT) for part in _suffixes(name)):
            continue
        total += param.numel()
    return total


def _suffixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]
