"""Hungarian matcher and the MaX-DeepLab / CMT-DeepLab losses (fact sheet §6)."""

from cmt_deeplab.losses.config import LossConfig
from cmt_deeplab.losses.criterion import PanopticCriterion
from cmt_deeplab.losses.instance_discrimination import (
    instance_discrimination_loss,
    pixel_contrastive_loss,
)
from cmt_deeplab.losses.mask_approximation import (
    mask_approximation_loss,
    mask_moments,
    normalized_coordinates,
)
from cmt_deeplab.losses.mask_id_loss import mask_id_loss, pixel_target_slot
from cmt_deeplab.losses.matcher import HungarianMatcher, check_finite, pq_similarity, slot_for_gt
from cmt_deeplab.losses.pq_loss import PQLossWeights, pq_class_loss, pq_dice_loss, pq_loss_weights
from cmt_deeplab.losses.semantic_loss import semantic_loss
from cmt_deeplab.losses.targets import PanopticTargets, build_targets

__all__ = [
    "HungarianMatcher",
    "LossConfig",
    "PQLossWeights",
    "PanopticCriterion",
    "PanopticTargets",
    "build_targets",
    "check_finite",
    "instance_discrimination_loss",
    "mask_approximation_loss",
    "mask_id_loss",
    "mask_moments",
    "normalized_coordinates",
    "pixel_contrastive_loss",
    "pixel_target_slot",
    "pq_class_loss",
    "pq_dice_loss",
    "pq_loss_weights",
    "pq_similarity",
    "semantic_loss",
    "slot_for_gt",
]
