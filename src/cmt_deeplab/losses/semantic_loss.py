"""Auxiliary semantic segmentation loss (§6.6): softmax cross-entropy at stride 4.

Options as deeplab2: top-k hard-pixel mining (``top_k`` < 1) and area-balanced pixel
sampling (``sample_k`` > 0, Gumbel-top-k over non-void pixels, kMaX COCO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmt_deeplab.data.metadata import IGNORE_LABEL
from cmt_deeplab.losses.reduction import top_k_mean
from cmt_deeplab.losses.sampling import area_balanced_sample
from cmt_deeplab.losses.targets import PanopticTargets


def semantic_loss(
    semantic_logits: Tensor,
    targets: PanopticTargets,
    top_k: float = 1.0,
    sample_k: int = 0,
    sample_temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-pixel cross-entropy against ``targets.semantic`` (``IGNORE_LABEL`` ignored).

    Args:
        semantic_logits: ``[B, K, h, w]`` at the targets' resolution.
        targets: ground truth; crowd pixels keep their class here.
        top_k: fraction of the hardest pixels kept.
        sample_k: if > 0, the loss uses only this many area-balanced sampled pixels.
        sample_temperature: temperature of the sampling logits.
        generator: RNG of the sampling.

    Returns:
        ``[B]`` mean over each image's (kept) labelled pixels.
    """
    cross_entropy = F.cross_entropy(
        semantic_logits.float(), targets.semantic, ignore_index=IGNORE_LABEL, reduction="none"
    ).flatten(1)  # [B, P], 0 where ignored
    if sample_k > 0:
        indices, sample_valid = area_balanced_sample(
            targets, sample_k, sample_temperature, generator
        )
        cross_entropy = cross_entropy.gather(1, indices) * sample_valid
    return top_k_mean(cross_entropy, top_k)
