"""Per-image loss reductions as deeplab2's ``base_loss`` does them.

deeplab2 averages each image's weighted per-element losses over the *non-zero* elements
(``compute_average_top_k_loss``), so zero-weighted elements (void pixels, padding) drop out
of the denominator; an image with no non-zero element contributes 0. The trainer then takes
the mean over the batch.
"""

from __future__ import annotations

from torch import Tensor


def mean_over_nonzero(loss: Tensor) -> Tensor:
    """``[B, ...]`` -> ``[B]``: sum over each image divided by its count of non-zero entries."""
    loss = loss.flatten(1)
    count = (loss != 0).sum(1).clamp(min=1)
    return loss.sum(1) / count


def top_k_mean(loss: Tensor, top_k: float = 1.0) -> Tensor:
    """``[B, E]`` -> ``[B]``: keeps the largest ``round(top_k * E)`` entries of each image
    (hard-example mining, deeplab2 ``top_k_percent_pixels``), then :func:`mean_over_nonzero`.
    """
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must lie in (0, 1], got {top_k}")
    loss = loss.flatten(1)
    if top_k < 1.0:
        k = max(1, round(top_k * loss.shape[1]))
        loss = loss.topk(k, dim=1, sorted=False).values
    return mean_over_nonzero(loss)
