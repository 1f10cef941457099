"""Soft mask similarities between ground-truth masks and predicted mask probabilities.

deeplab2 ``_mask_similarity``: the dice variant divides the intersection by the *mean* of
the two areas, i.e. ``2|g.m| / (|g| + |m|)`` up to the 1e-5 epsilon.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-5


def dice_similarity(gt_masks: Tensor, pred_probs: Tensor) -> Tensor:
    """Soft dice between every GT mask and every predicted mask.

    Args:
        gt_masks: ``[B, G, P]`` float in {0, 1}.
        pred_probs: ``[B, N, P]`` non-negative (slot probabilities, void pixels zeroed).

    Returns:
        ``[B, G, N]`` similarities in [0, 1].
    """
    intersection = torch.einsum("bgp,bnp->bgn", gt_masks, pred_probs)
    mean_area = (gt_masks.sum(-1)[:, :, None] + pred_probs.sum(-1)[:, None, :]) / 2
    return intersection / (mean_area + _EPS)


def matched_dice_similarity(gt_masks: Tensor, pred_probs: Tensor) -> Tensor:
    """Soft dice of paired masks (the diagonal of :func:`dice_similarity`).

    Args:
        gt_masks: ``[..., P]`` float in {0, 1}.
        pred_probs: ``[..., P]`` the paired predictions.

    Returns:
        ``[...]`` similarities.
    """
    intersection = (gt_masks * pred_probs).sum(-1)
    mean_area = (gt_masks.sum(-1) + pred_probs.sum(-1)) / 2
    return intersection / (mean_area + _EPS)


def overlap_over_prediction(region: Tensor, pred_probs: Tensor) -> Tensor:
    """Fraction of each predicted mask that lies in ``region`` (deeplab2's
    ``intersection_over_prediction``).

    Args:
        region: ``[B, P]`` float in {0, 1}.
        pred_probs: ``[B, N, P]``.

    Returns:
        ``[B, N]``.
    """
    intersection = torch.einsum("bp,bnp->bn", region, pred_probs)
    return intersection / (pred_probs.sum(-1) + _EPS)
