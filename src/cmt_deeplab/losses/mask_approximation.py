"""CMT-DeepLab mask-approximation loss on the reference masks (fact sheet §6.8, [R]).

Each CMT layer predicts, per cluster centre, a Gaussian reference mask with mean
``ref_mu [B, N, 2]`` and std ``ref_sigma [B, N, 2]`` in normalised ``(y, x)`` coordinates.
For each matched (GT mask, slot) pair the loss is
``|mu - mean(g)|_1 + |sigma - std(g)|_1`` where ``mean(g)`` and ``std(g)`` (population,
per axis) are the moments of the GT mask's pixel coordinates; the batch loss is the mean
over all matched pairs.

Coordinates follow the corner-aligned convention of the strided ground truth: pixel
``(i, j)`` of an ``h x w`` map sits at ``(i / (h - 1), j / (w - 1))`` (0.5 when a side is
1). The CMT layer's reference masks use the same convention at their own resolution, so
``mu`` and ``sigma`` mean the same thing at every stride.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cmt_deeplab.losses.targets import PanopticTargets


def normalized_coordinates(
    height: int, width: int, device: torch.device | str | None = None, dtype=torch.float32
) -> Tensor:
    """``[h*w, 2]`` ``(y, x)`` coordinates in [0, 1], row-major, corners at 0 and 1."""

    def axis(size: int) -> Tensor:
        if size == 1:  # a single row/column sits in the middle of the image
            return torch.full((1,), 0.5, device=device, dtype=dtype)
        return torch.linspace(0.0, 1.0, size, device=device, dtype=dtype)

    grid_y, grid_x = torch.meshgrid(axis(height), axis(width), indexing="ij")
    return torch.stack([grid_y.flatten(), grid_x.flatten()], dim=-1)


def mask_moments(targets: PanopticTargets) -> tuple[Tensor, Tensor]:
    """Mean and per-axis population std of each GT mask's normalised pixel coordinates.

    Returns:
        mean: ``[B, G, 2]`` ``(y, x)``; std: ``[B, G, 2]``. Padding masks give zeros.
    """
    h, w = targets.mask_size
    # float64: the E[x^2] - E[x]^2 form cancels badly in float32 for tiny masks.
    coords = normalized_coordinates(h, w, targets.gt_masks.device, torch.float64)  # [P, 2]
    gt = targets.gt_masks.flatten(2).double()  # [B, G, P]
    area = gt.sum(-1, keepdim=True).clamp(min=1.0)  # [B, G, 1]
    mean = torch.einsum("bgp,pc->bgc", gt, coords) / area
    second = torch.einsum("bgp,pc->bgc", gt, coords.square()) / area
    std = (second - mean.square()).clamp(min=0.0).sqrt()
    return mean.float(), std.float()


def mask_approximation_loss(
    ref_mu: Tensor,
    ref_sigma: Tensor,
    gt_mean: Tensor,
    gt_std: Tensor,
    slot_for_gt: Tensor,
) -> Tensor:
    """L1 between matched reference Gaussians and GT mask moments.

    Args:
        ref_mu: ``[B, N, 2]`` predicted means.
        ref_sigma: ``[B, N, 2]`` predicted stds.
        gt_mean, gt_std: ``[B, G, 2]`` from :func:`mask_moments`.
        slot_for_gt: ``[B, G]`` matched slot per GT mask, ``-1`` if none.

    Returns:
        Scalar mean over matched pairs (0, still attached to the graph, if none).
    """
    batch_index, gt_index = (slot_for_gt >= 0).nonzero(as_tuple=True)
    slot_index = slot_for_gt[batch_index, gt_index]
    mu = ref_mu.float()[batch_index, slot_index]  # [M, 2]
    sigma = ref_sigma.float()[batch_index, slot_index]
    error = (mu - gt_mean[batch_index, gt_index]).abs().sum(-1) + (
        sigma - gt_std[batch_index, gt_index]
    ).abs().sum(-1)
    if error.numel() == 0:
        return ref_mu.sum() * 0.0 + ref_sigma.sum() * 0.0
    return error.mean()
