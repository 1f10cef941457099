"""PQ of a model on a dataset split, in memory (the periodic evaluation of training).

Each image is read at its original size, predicted with ``inference.Predictor`` (resize into
the canvas, pad, model, post-process, undo) and scored against its panoptic PNG with the same
per-image statistics as ``evaluation.evaluate_panoptic`` (panopticapi's rules), so the number
equals writing the predictions out and running ``pq_compute`` on them.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset, DataError
from cmt_deeplab.evaluation.miou import semantic_miou
from cmt_deeplab.evaluation.panoptic_stats import (
    PanopticStats,
    image_panoptic_stats,
    summarize_pq,
)
from cmt_deeplab.inference.predictor import Predictor


def evaluate_model(
    model: nn.Module,
    dataset: CocoPanopticDataset,
    size: int | tuple[int, int],
    device: str | torch.device | None = None,
    method: str = "pixelwise",
    max_images: int = 0,
    batch_size: int = 4,
    progress: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    **thresholds: Any,
) -> dict[str, Any]:
    """Panoptic quality of ``model`` on ``dataset`` (its raw images and PNGs; transforms unused).

    Args:
        model: follows the output contract; it is put in eval mode (the caller restores it).
        dataset: a COCO-layout dataset (``load_raw`` and ``records``).
        size: the Predictor canvas (``S`` or ``(H, W)``).
        device: default: the model's device.
        method: ``"pixelwise"`` or ``"maskwise"``.
        max_images: evaluate the first ``max_images`` images only (0: all).
        batch_size: images per forward pass.
        precision, compile: as ``Predictor`` (autocast, ``torch.compile``).
        thresholds: post-processing arguments (``class_threshold``, ``thing_area_limit``, ...).

    Returns:
        ``summarize_pq`` (``All`` / ``Things`` / ``Stuff`` with ``pq``, ``sq``, ``rq``, ``n`` in
        [0, 1], ``per_class``) plus ``miou``, ``num_images`` (the images scored) and
        ``skipped`` (``[{"file", "error"}]``: the bad items left out with ``skip_bad``).

    Raises:
        ValueError: the split has no images, or its JSON repeats an image id (the last entry
            would win and predictions would be scored against another image's PNG).
    """
    dataset.require_unique_ids()
    if len(dataset) == 0:
        raise ValueError(f"{dataset.annotations_json}: the split has no annotated images; "
                         "nothing to evaluate")
    if device is None:
        device = next(model.parameters()).device
    predictor = Predictor(model, dataset.info, size=size, device=device, method=method,
                          batch_size=batch_size, precision=precision, compile=compile,
                          **thresholds)
    count = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    stats = PanopticStats.zeros(dataset.info.num_classes)
    pending: list[tuple[Any, Any, Any]] = []  # (image, gt ids, record)
    skipped: list[dict[str, str]] = []

    def flush() -> None:
        results = predictor.predict_arrays([image for image, _, _ in pending])
        for (_, gt_ids, record), result in zip(pending, results, strict=True):
            nonlocal stats
            stats += image_panoptic_stats(
                gt_ids, record.segments_info, result.panoptic, result.segments_info,
                dataset.info, image_name=f"image id {record.image_id}",
            )
        pending.clear()

    for index in tqdm(range(count), desc="eval", leave=False, disable=not progress):
        try:
            image, gt_ids, _ = dataset.load_raw(index)
        except (DataError, FileNotFoundError) as error:
            if not dataset.skip_bad:
                raise
            warnings.warn(f"evaluation skips a bad item: {error}", stacklevel=2)
            skipped.append({"file": str(getattr(error, "path", "")), "error": str(error)})
            continue
        pending.append((image, gt_ids, dataset.records[index]))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    result = summarize_pq(stats, dataset.info)
    result["miou"] = semantic_miou(stats.confusion)[0]
    result["num_images"] = stats.num_images
    result["skipped"] = skipped
    return result
