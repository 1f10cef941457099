"""Area-balanced pixel sampling with the Gumbel-top-k trick (deeplab2 ``_gumbel_topk_sample``).

Adding Gumbel noise to logits and taking the top k draws k items *without replacement* from
``softmax(logits)``. With ``logits = T * log(HW / area(mask of pixel))`` each mask gets a
share of the samples that grows with ``area^(1 - T)``: small masks are not drowned out by
large stuff regions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmt_deeplab.losses.targets import PanopticTargets


def gumbel_top_k(logits: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Samples ``k`` indices per row without replacement, proportionally to ``softmax(logits)``.

    Args:
        logits: ``[B, P]``; ``-inf`` entries are drawn only after all finite ones.
        k: samples per row, ``k <= P``.
        generator: optional RNG for reproducible draws (may live on another device).

    Returns:
        ``[B, k]`` int64 indices.
    """
    device = generator.device if generator is not None else logits.device
    uniform = torch.rand(logits.shape, generator=generator, device=device).to(logits.device)
    # Clamp keeps log(0) out; the bias this adds is far below float resolution.
    uniform = uniform.clamp(min=1e-12, max=1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(uniform))
    return (logits + gumbel).topk(k, dim=1).indices


def inverse_mask_area(targets: PanopticTargets) -> Tensor:
    """``[B, P]``: ``HW / area(mask of the pixel)``; ``HW`` (area clamped to 1) for void pixels."""
    num_pixels = targets.pixel_valid[0].numel()
    area = targets.gt_area  # [B, G]
    mask_id = targets.pixel_mask_id.flatten(1)  # [B, P]
    pixel_area = area.gather(1, mask_id.clamp(min=0)) * targets.pixel_valid.flatten(1)
    return num_pixels / pixel_area.clamp(min=1.0)


def area_balanced_sample(
    targets: PanopticTargets,
    k: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draws ``min(k, HW)`` pixels per image, non-void pixels first, area-balanced.

    Returns:
        indices: ``[B, k']`` flat pixel indices.
        valid: ``[B, k']`` bool, False where the image had fewer than ``k'`` non-void pixels
        and a void pixel filled the draw; callers must ignore those.
    """
    pixel_valid = targets.pixel_valid.flatten(1)
    logits = temperature * torch.log(inverse_mask_area(targets))
    logits = logits.masked_fill(~pixel_valid, float("-inf"))
    indices = gumbel_top_k(logits, min(k, logits.shape[1]), generator)
    return indices, pixel_valid.gather(1, indices)
