"""Mask-ID cross-entropy (§6.5): each non-void pixel classifies which slot it belongs to.

The slot logits are softmaxed over all ``N`` slots, and the target of a pixel is the slot
matched to its GT mask; deeplab2 expresses the same thing by permuting the logits into GT
order. Pixels whose GT mask is unmatched (more GT masks than slots) are ignored.
"""

from __future__ import annotations

from torch import Tensor

from cmt_deeplab.losses.reduction import top_k_mean
from cmt_deeplab.losses.targets import PanopticTargets


def pixel_target_slot(targets: PanopticTargets, slot_for_gt: Tensor) -> Tensor:
    """``[B, P]`` int64: the slot each pixel should be assigned to, ``-1`` to ignore."""
    mask_id = targets.pixel_mask_id.flatten(1)  # [B, P]
    slots = slot_for_gt.gather(1, mask_id.clamp(min=0))
    return slots.masked_fill(mask_id < 0, -1)


def mask_id_loss(pred_masks: Tensor, target_slot: Tensor, top_k: float = 1.0) -> Tensor:
    """Per-pixel cross-entropy over slots.

    Args:
        pred_masks: ``[B, N, h, w]`` mask logits.
        target_slot: ``[B, h*w]`` from :func:`pixel_target_slot`.
        top_k: fraction of the hardest pixels kept (1.0 = all).

    Returns:
        ``[B]`` mean over the image's non-void pixels.
    """
    log_probs = pred_masks.flatten(2).float().log_softmax(1)  # [B, N, P]
    keep = target_slot >= 0
    picked = log_probs.gather(1, target_slot.clamp(min=0)[:, None, :])[:, 0]  # [B, P]
    return top_k_mean(-picked * keep, top_k)
