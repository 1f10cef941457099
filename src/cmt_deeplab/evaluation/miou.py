"""Semantic mean IoU from a confusion matrix."""

from __future__ import annotations

import numpy as np


def semantic_miou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean IoU over the classes that occur in the GT or the prediction.

    Args:
        confusion: ``[K+1, K+1]`` pixel counts, rows GT, columns prediction, contiguous
            class order; index ``K`` is void. GT void pixels (row ``K``) are ignored;
            pixels predicted void (column ``K``) count as misses of their GT class.

    Returns:
        ``(miou, iou)``: ``iou`` is ``[K]`` float64, NaN for a class with an empty union
        (absent from both GT and prediction); ``miou`` is the mean of the others (0.0 if none).
    """
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] < 2:
        raise ValueError(f"expected a square [K+1, K+1] confusion matrix, got {confusion.shape}")
    k = confusion.shape[0] - 1
    valid = confusion[:k].astype(np.float64)  # [K, K+1] drops GT void
    intersection = np.diagonal(valid)[:k]
    union = valid.sum(axis=1) + valid[:, :k].sum(axis=0) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
    present = union > 0
    miou = float(iou[present].mean()) if present.any() else 0.0
    return miou, iou
