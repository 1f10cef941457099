"""MaX-DeepLab's PQ-style loss: a weighted class term and a weighted mask-dice term (§6.3).

PQ = RQ x SQ is approximated per matched pair by ``p(c) x dice``; its gradient splits into
a class cross-entropy weighted by the (stop-gradient) dice and a dice loss weighted by the
(stop-gradient) class probability. deeplab2: ``FocalCrossEntropyLoss`` (gamma 0) and
``MaskDiceLoss`` inside ``max_deeplab_loss.py``.

The weights come from the *final* output once and are reused for every auxiliary output,
as deeplab2 does; only the logits change between outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cmt_deeplab.losses.matcher import pq_similarity
from cmt_deeplab.losses.reduction import mean_over_nonzero
from cmt_deeplab.losses.similarity import overlap_over_prediction
from cmt_deeplab.losses.targets import PanopticTargets, repeat_batch

_MIN_WEIGHT = 1e-5


@dataclass
class PQLossWeights:
    """Stop-gradient targets and weights of the PQ-style loss.

    Attributes:
        class_target: ``[B, N]`` int64, the matched GT class, or ``K`` (void) if unmatched.
        class_weight: ``[B, N]``: ``max(dice, 1e-5)`` for matched slots,
            ``max(void_ratio, 1e-5)`` for unmatched ones.
        dice_weight: ``[B, G]``: ``max(p(c_i), 1e-5)`` of the matched slot, 0 for padding and
            for GT masks left unmatched (more GT masks than slots).
    """

    class_target: Tensor
    class_weight: Tensor
    dice_weight: Tensor

    def repeat(self, times: int) -> PQLossWeights:
        """The batch repeated ``times`` times along its first axis (stacked outputs)."""
        return PQLossWeights(*(repeat_batch(value, times) for value in
                               (self.class_target, self.class_weight, self.dice_weight)))


@torch.no_grad()
def pq_loss_weights(
    pred_logits: Tensor, pred_masks: Tensor, targets: PanopticTargets, slot_for_gt: Tensor
) -> PQLossWeights:
    """Builds the class targets and the stop-gradient weights from one output.

    Args:
        pred_logits: ``[B, N, K+1]``.
        pred_masks: ``[B, N, h, w]``.
        targets: ground truth with ``G`` masks.
        slot_for_gt: ``[B, G]`` matched slot per GT mask, ``-1`` if none.
    """
    batch_size, num_slots, num_outputs = pred_logits.shape
    void_class = num_outputs - 1
    mask_similarity, class_similarity = pq_similarity(pred_logits, pred_masks, targets)
    matched = slot_for_gt >= 0  # [B, G]
    batch_index, gt_index = matched.nonzero(as_tuple=True)
    slot_index = slot_for_gt[batch_index, gt_index]

    class_target = torch.full(
        (batch_size, num_slots), void_class, dtype=torch.long, device=pred_logits.device
    )
    class_target[batch_index, slot_index] = targets.gt_labels[batch_index, gt_index]

    # Unmatched slots: deeplab2's comment says a slot overlapping void is penalised *less*,
    # but its code weights the void target by the overlap ratio, i.e. *more*. We follow the
    # code (fact sheet §6.3). The ratio uses the raw slot probabilities, void included.
    void_region = (~targets.pixel_valid).flatten(1).float()
    probs = pred_masks.flatten(2).float().softmax(1)
    class_weight = overlap_over_prediction(void_region, probs).clamp(min=_MIN_WEIGHT)
    matched_dice = mask_similarity[batch_index, gt_index, slot_index]
    class_weight[batch_index, slot_index] = matched_dice.clamp(min=_MIN_WEIGHT)

    dice_weight = torch.zeros_like(slot_for_gt, dtype=torch.float32)
    matched_class_prob = class_similarity[batch_index, gt_index, slot_index]
    dice_weight[batch_index, gt_index] = matched_class_prob.clamp(min=_MIN_WEIGHT)
    return PQLossWeights(class_target, class_weight, dice_weight)


def pq_class_loss(pred_logits: Tensor, weights: PQLossWeights, alpha: float = 0.75) -> Tensor:
    """Weighted softmax cross-entropy of every slot against its matched class or void.

    Positives are scaled by ``alpha``, void targets by ``1 - alpha``; each image's sum is
    divided by its number of non-zero terms.

    Args:
        pred_logits: ``[B, N, K+1]``.
        weights: from :func:`pq_loss_weights`.
        alpha: focal-loss alpha (gamma is 0).

    Returns:
        ``[B]`` unweighted class term per image.
    """
    void_class = pred_logits.shape[-1] - 1
    cross_entropy = F.cross_entropy(
        pred_logits.float().transpose(1, 2), weights.class_target, reduction="none"
    )  # [B, N]
    is_void = weights.class_target == void_class
    alpha_weight = torch.where(is_void, 1.0 - alpha, alpha)
    return mean_over_nonzero(cross_entropy * alpha_weight * weights.class_weight)


def pq_dice_loss(
    pred_masks: Tensor,
    targets: PanopticTargets,
    slot_for_gt: Tensor,
    weights: PQLossWeights,
    alpha: float = 0.75,
) -> Tensor:
    """Dice loss of each matched (GT mask, slot) pair, weighted by the class probability.

    ``dice_loss = 1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1)`` over non-void pixels, with
    ``p`` the slot's softmax-over-slots probability. The sum over GT masks is scaled by
    ``alpha / N`` so that the term shares the class term's weight and normalisation.

    Args:
        pred_masks: ``[B, N, h, w]``.
        targets: ground truth with ``G`` masks.
        slot_for_gt: ``[B, G]`` matched slot per GT mask, ``-1`` if none.
        weights: from :func:`pq_loss_weights`.
        alpha: focal-loss alpha.

    Returns:
        ``[B]`` unweighted dice term per image.
    """
    num_slots = pred_masks.shape[1]
    pixel_valid = targets.pixel_valid.flatten(1).float()  # [B, P]
    probs = pred_masks.flatten(2).float().softmax(1) * pixel_valid[:, None, :]  # [B, N, P]
    index = slot_for_gt.clamp(min=0)[..., None].expand(-1, -1, probs.shape[-1])
    matched_probs = probs.gather(1, index)  # [B, G, P], permuted into GT order
    gt = targets.gt_masks.flatten(2).float()
    dice = (2 * (matched_probs * gt).sum(-1) + 1) / (matched_probs.sum(-1) + gt.sum(-1) + 1)
    dice_loss = 1.0 - dice  # [B, G]
    return (dice_loss * weights.dice_weight).sum(-1) * (alpha / num_slots)
