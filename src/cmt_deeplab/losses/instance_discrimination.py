"""Instance discrimination on the normalised pixel features (§6.4).

Two variants, as deeplab2 ``max_deeplab_loss.py`` has them:

* MaX-DeepLab original (``sample_k = 0``): each GT mask's mean feature, L2-normalised, is a
  class prototype; every *thing* pixel classifies its own mask among all valid masks.
* Pixel-contrastive (credited to CMT-DeepLab, ``sample_k > 0``): ``K`` area-balanced
  non-void pixels (things *and* stuff) are sampled; each anchor's soft target is the
  uniform distribution over the sampled pixels of its own mask (itself included), its
  prediction the softmax of ``f_a . f_b / tau`` over all sampled pixels; the loss is the
  soft-target cross-entropy averaged over anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmt_deeplab.losses.reduction import mean_over_nonzero
from cmt_deeplab.losses.sampling import area_balanced_sample
from cmt_deeplab.losses.targets import PanopticTargets

# Large negative logit for masked entries (deeplab2's constant); finite so that a row
# with nothing valid stays NaN-free.
_MASKED_LOGIT = -99999.0


def instance_discrimination_loss(
    pixel_feature: Tensor, targets: PanopticTargets, temperature: float = 0.3
) -> Tensor:
    """MaX-DeepLab's instance discrimination.

    Args:
        pixel_feature: ``[B, D, h, w]`` L2-normalised over ``D``.
        targets: ground truth with ``G`` masks at ``h x w``.
        temperature: ``tau``.

    Returns:
        ``[B]`` mean cross-entropy over each image's thing pixels.
    """
    feature = pixel_feature.flatten(2).float()  # [B, D, P]
    gt = targets.gt_masks.flatten(2).float()  # [B, G, P]
    mask_feature = torch.einsum("bdp,bgp->bgd", feature, gt)
    mask_feature = mask_feature / targets.gt_area.clamp(min=1.0)[..., None]
    mask_feature = F.normalize(mask_feature, dim=-1)  # [B, G, D]
    logits = torch.einsum("bdp,bgd->bpg", feature, mask_feature) / temperature  # [B, P, G]
    logits = logits.masked_fill(~targets.gt_valid[:, None, :], _MASKED_LOGIT)

    mask_id = targets.pixel_mask_id.flatten(1)  # [B, P]
    is_thing = targets.gt_is_thing.gather(1, mask_id.clamp(min=0)) & (mask_id >= 0)
    picked = logits.log_softmax(-1).gather(2, mask_id.clamp(min=0)[..., None])[..., 0]
    return mean_over_nonzero(-picked * is_thing)


def pixel_contrastive_loss(
    pixel_feature: Tensor,
    targets: PanopticTargets,
    temperature: float = 0.3,
    sample_k: int = 4096,
    sample_temperature: float = 0.6,
    generator: torch.Generator | None = None,
) -> Tensor:
    """CMT-DeepLab's pixel-contrastive instance discrimination.

    Args:
        pixel_feature: ``[B, D, h, w]`` L2-normalised over ``D``.
        targets: ground truth at ``h x w``.
        temperature: ``tau`` of the pixel-pair similarities.
        sample_k: pixels sampled per image (fewer if the image has fewer pixels).
        sample_temperature: ``T_s`` of the area-balanced sampling logits.
        generator: RNG of the sampling, for reproducibility.

    Returns:
        ``[B]`` soft-target cross-entropy averaged over the sampled anchors.
    """
    feature = pixel_feature.flatten(2).float()  # [B, D, P]
    mask_id = targets.pixel_mask_id.flatten(1)  # [B, P]
    if sample_k >= mask_id.shape[1]:
        # Every pixel would be drawn: the draw could only reorder them, which the loss does
        # not see, so skip it (k = 4096 on a 96px crop's 24 x 24 masks).
        sample_valid = targets.pixel_valid.flatten(1)
        sampled = feature.transpose(1, 2) * sample_valid[..., None]  # [B, P, D]
        sampled_id = mask_id.clamp(min=0)
    else:
        indices, sample_valid = area_balanced_sample(
            targets, sample_k, sample_temperature, generator
        )
        sampled = feature.gather(2, indices[:, None, :].expand(-1, feature.shape[1], -1))
        sampled = sampled.transpose(1, 2) * sample_valid[..., None]  # [B, k, D]
        sampled_id = mask_id.gather(1, indices).clamp(min=0)  # [B, k]

    # Void pixels fill the draw only when an image has fewer than k non-void pixels; they
    # are neither anchors nor candidates.
    candidates = None if bool(sample_valid.all()) else sample_valid
    log_partition = similarity_logsumexp(sampled, temperature, candidates)  # [B, k]

    # The soft target of anchor a is uniform over the sampled pixels of its own mask, so
    # sum_b target_ab * logit_ab = f_a . mean(f_b of a's mask) / tau. Computing it through
    # per-mask sums avoids materialising (and saving for backward) the [B, k, k] target.
    num_gt = targets.gt_masks.shape[1]
    index = sampled_id[..., None].expand_as(sampled)
    mask_sum = sampled.new_zeros(sampled.shape[0], num_gt, sampled.shape[2])
    mask_sum = mask_sum.scatter_add(1, index, sampled)  # [B, G, D]
    mask_count = torch.zeros_like(targets.gt_area).scatter_add(
        1, sampled_id, sample_valid.float()
    )  # [B, G]
    mask_mean = mask_sum / mask_count.clamp(min=1.0)[..., None]
    positive = (sampled * mask_mean.gather(1, index)).sum(-1) / temperature  # [B, k]
    cross_entropy = (log_partition - positive) * sample_valid  # [B, k]
    return mean_over_nonzero(cross_entropy)


def similarity_logsumexp(
    feature: Tensor, temperature: float, candidates: Tensor | None = None
) -> Tensor:
    """``log sum_j exp(f_a . f_j / tau)`` over the candidate pixels ``j``, for every anchor ``a``.

    The same value and gradient as ``(f @ f.T / tau).masked_fill(~candidates, -inf)
    .logsumexp(-1)``, computed with three passes over the ``[B, k, k]`` similarities forward
    and one GEMM backward instead of about ten passes (this loss was a fifth of a tiny-model
    CPU training step).

    Args:
        feature: ``[B, k, D]``, rows L2-normalised (or zero). The exponent is shifted per image
            by ``max_j |f_j|^2 / tau`` (the largest possible similarity), which keeps the
            exponentials symmetric; exact while that shift stays below ~80 (any rows of norm
            <= 1, e.g. up to |f| = 4.9 at tau = 0.3).
        temperature: ``tau``.
        candidates: optional ``[B, k]`` bool, the pixels that may appear in the sum.

    Returns:
        ``[B, k]``.
    """
    return _SimilarityLogSumExp.apply(feature, temperature, candidates)


class _SimilarityLogSumExp(torch.autograd.Function):
    # E = exp(f f^T / tau - shift) is symmetric (one shift per image), Z = E c its candidate
    # sums (c = 1 without candidates). With s = g / (Z tau) (g the incoming [B, k]), the
    # gradient of every f_x collects its anchor row and its candidate column:
    #   grad f = s * E (c * f) + c * E^T (s * f) = s * E (c * f) + c * E (s * f),
    # both products of the same E: one GEMM against [c * f, s * f], one pass over E.
    @staticmethod
    def forward(ctx, feature: Tensor, temperature: float, candidates: Tensor | None) -> Tensor:
        with torch.autocast(feature.device.type, enabled=False):
            feature = feature.float()
            shift = feature.square().sum(-1).amax(-1) / temperature  # [B]
            weights = torch.bmm(feature / temperature, feature.transpose(1, 2))  # [B, k, k]
            weights.sub_(shift[:, None, None]).exp_()
            if candidates is None:
                total = weights.sum(-1)
            else:
                # E c as c^T E (E is symmetric): a vector-matrix product streams E row by row,
                # 10x faster on CPU than the matrix-vector one (4.3 -> 0.4 ms per tiny step).
                candidates = candidates.to(weights.dtype)
                total = torch.bmm(candidates[:, None, :], weights)[:, 0]
            # An image without a single candidate keeps finite values (its anchors are void).
            total = total.clamp_(min=torch.finfo(torch.float32).tiny)  # [B, k]
        ctx.temperature = temperature
        ctx.save_for_backward(feature, weights, total, candidates)
        return total.log() + shift[:, None]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        feature, weights, total, candidates = ctx.saved_tensors
        with torch.autocast(feature.device.type, enabled=False):
            scale = (grad / total / ctx.temperature)[..., None]  # [B, k, 1]
            as_candidate = feature if candidates is None else feature * candidates[..., None]
            products = torch.bmm(weights, torch.cat([as_candidate, feature * scale], -1))
            row, column = products.chunk(2, dim=-1)
            grad_feature = row.mul_(scale)
            if candidates is not None:
                column = column * candidates[..., None]
            grad_feature.add_(column)
        return grad_feature, None, None
