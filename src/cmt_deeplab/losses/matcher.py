"""Hungarian matching of predicted mask slots to ground-truth masks (fact sheet §6.2).

The similarity is MaX-DeepLab's PQ-style one: ``dice(g_i, m_j) x p_j(c_i)``, where ``m_j``
is slot j's share of the softmax over slots (void pixels zeroed) and ``p_j(c_i)`` its
probability of GT class ``c_i`` (softmax over all K+1 classes, void column dropped, not
renormalised). The assignment maximises the summed similarity over valid GT masks. When
there are more GT masks than slots, the extra GT masks stay unmatched.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from cmt_deeplab.losses.similarity import dice_similarity
from cmt_deeplab.losses.targets import PanopticTargets

Match = tuple[Tensor, Tensor]  # (slot_indices [M], gt_indices [M]), int64, on CPU


def check_finite(tensor: Tensor, key: str, step: str) -> None:
    """Raises ``FloatingPointError`` naming ``key`` and ``step`` if ``tensor`` has NaN/inf."""
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad_images = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise FloatingPointError(
            f"non-finite values in outputs[{key!r}] at step {step!r} (batch indices {bad_images})"
        )


def pq_similarity(
    pred_logits: Tensor, pred_masks: Tensor, targets: PanopticTargets
) -> tuple[Tensor, Tensor]:
    """Mask and class similarities of every (GT mask, slot) pair.

    Args:
        pred_logits: ``[B, N, K+1]`` class logits, last = void.
        pred_masks: ``[B, N, h, w]`` mask logits.
        targets: ground truth with ``G`` masks at ``h x w``.

    Returns:
        mask_similarity: ``[B, G, N]`` soft dice.
        class_similarity: ``[B, G, N]`` probability of the GT class (0 for padding rows).
    """
    pixel_valid = targets.pixel_valid.flatten(1).float()  # [B, P]
    probs = pred_masks.flatten(2).float().softmax(1) * pixel_valid[:, None, :]  # [B, N, P]
    mask_similarity = dice_similarity(targets.gt_masks.flatten(2).float(), probs)
    class_probs = pred_logits.float().softmax(-1)[..., :-1]  # [B, N, K]
    labels = targets.gt_labels.clamp(min=0)  # [B, G]
    class_similarity = class_probs.gather(
        2, labels[:, None, :].expand(-1, class_probs.shape[1], -1)
    ).transpose(1, 2)  # [B, G, N]
    class_similarity = class_similarity * targets.gt_valid[..., None]
    return mask_similarity, class_similarity


class HungarianMatcher(nn.Module):
    """Matches slots to GT masks with scipy's ``linear_sum_assignment`` (DETR style)."""

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: PanopticTargets) -> list[Match]:
        """Computes the assignment of one batch.

        Args:
            outputs: holds ``pred_logits [B, N, K+1]`` and ``pred_masks [B, N, h, w]``.
            targets: ground truth at ``h x w``.

        Returns:
            ``B`` pairs ``(slot_indices, gt_indices)``, int64 CPU tensors of equal length
            ``min(G_valid, N)``, sorted by GT index.
        """
        for key in ("pred_logits", "pred_masks"):
            check_finite(outputs[key], key, "Hungarian matching")
        mask_similarity, class_similarity = pq_similarity(
            outputs["pred_logits"], outputs["pred_masks"], targets
        )
        # One device-to-host copy per batch; scipy does the rest on the CPU.
        cost = (-(mask_similarity * class_similarity)).cpu().numpy()
        gt_valid = targets.gt_valid.cpu().numpy()
        matches = []
        for b in range(cost.shape[0]):
            valid_rows = np.flatnonzero(gt_valid[b])
            rows, slots = linear_sum_assignment(cost[b][valid_rows])
            gt_indices = valid_rows[rows]
            order = np.argsort(gt_indices)
            matches.append(
                (
                    torch.as_tensor(slots[order], dtype=torch.long),
                    torch.as_tensor(gt_indices[order], dtype=torch.long),
                )
            )
        return matches


def slot_for_gt(matches: list[Match], num_gt: int, device: torch.device | str) -> Tensor:
    """``[B, G]`` int64: the slot matched to each GT mask, ``-1`` if unmatched or padding."""
    table = torch.full((len(matches), num_gt), -1, dtype=torch.long)
    for b, (slots, gts) in enumerate(matches):
        table[b, gts] = slots
    return table.to(device)
