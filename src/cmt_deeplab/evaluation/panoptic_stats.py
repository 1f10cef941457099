"""Per-image panoptic quality statistics, computed the way panopticapi does, with numpy.

panopticapi (``pq_compute_single_core``) loops over the ``np.unique`` of ``gt * 2^24 + pred``
in Python. We compute the same segment-pair intersection table with one ``np.bincount`` over
compact segment indices and then apply its rules to the whole table at once:

- a GT segment and a predicted segment of the same category match iff
  ``IoU = inter / (pred_area + gt_area - inter - pred_area_on_void) > 0.5`` (strictly);
  GT crowd segments never match; GT ``area`` is read from ``segments_info`` when present
  (as panopticapi does), predicted areas are counted in the PNG;
- an unmatched non-crowd GT segment is a false negative;
- an unmatched predicted segment is a false positive unless more than half of it lies on GT
  void (id 0) plus the GT crowd segment of its category. As in panopticapi, when an image has
  several crowd segments of one category only the last one in ``segments_info`` counts.

The same pass also fills a semantic confusion matrix ``[K+1, K+1]`` (rows GT, columns
prediction, index ``K`` = void) in ``DatasetInfo`` contiguous order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmt_deeplab.data.metadata import DatasetInfo


@dataclass
class PanopticStats:
    """Sums over images, per contiguous class ``[K]``, plus the semantic confusion."""

    tp: np.ndarray  # [K] int64
    fp: np.ndarray  # [K] int64
    fn: np.ndarray  # [K] int64
    iou: np.ndarray  # [K] float64, sum of the IoUs of the true positives
    confusion: np.ndarray  # [K+1, K+1] int64, rows GT, columns prediction, K = void
    num_images: int = field(default=0)

    @classmethod
    def zeros(cls, num_classes: int) -> PanopticStats:
        k = num_classes
        return cls(
            tp=np.zeros(k, np.int64), fp=np.zeros(k, np.int64), fn=np.zeros(k, np.int64),
            iou=np.zeros(k, np.float64), confusion=np.zeros((k + 1, k + 1), np.int64),
        )

    def __iadd__(self, other: PanopticStats) -> PanopticStats:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        self.confusion += other.confusion
        self.num_images += other.num_images
        return self


def _pair_runs(
    gt_ids: np.ndarray, pred_ids: np.ndarray, id_mask: int | None = None
) -> tuple[np.ndarray, ...]:
    """Runs of constant (gt, pred) id along the flattened image.

    Panoptic maps are piecewise constant, so a 640x480 image has a few thousand runs instead
    of 307,200 pixels; everything after this works on runs, weighted by their length. This
    replaces the sort behind panopticapi's ``np.unique`` with two comparisons per pixel.

    Returns ``(gt_id [R], pred_id [R], length [R] float64)``, ids ``& id_mask`` if given.
    """
    gt_flat, pred_flat = gt_ids.ravel(), pred_ids.ravel()
    change = np.empty(gt_flat.size, bool)
    change[:1] = True
    np.not_equal(gt_flat[1:], gt_flat[:-1], out=change[1:])
    change[1:] |= pred_flat[1:] != pred_flat[:-1]
    starts = np.flatnonzero(change)
    length = np.diff(starts, append=gt_flat.size).astype(np.float64)
    gt_run, pred_run = gt_flat[starts].astype(np.int64), pred_flat[starts].astype(np.int64)
    if id_mask is not None:
        gt_run &= id_mask
        pred_run &= id_mask
    return gt_run, pred_run, length


def _compact_index(ids: np.ndarray, known_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps segment ids ``[R]`` to positions in ``known_sorted`` ``[S]``.

    Returns ``(position [R], found [R] bool)``; ``position`` is meaningless where ``found``
    is False.
    """
    if known_sorted.size == 0:
        return np.zeros(ids.shape, np.int64), np.zeros(ids.shape, bool)
    position = np.searchsorted(known_sorted, ids)
    np.minimum(position, known_sorted.size - 1, out=position)
    return position, known_sorted[position] == ids


def check_segments_info(segments: list[dict[str, Any]], info: DatasetInfo, where: str) -> None:
    """``ValueError`` naming ``where`` for a malformed record, a duplicate id or an unknown
    category id."""
    seen = set()
    for s in segments:
        try:
            segment_id, category_id = int(s["id"]), s["category_id"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: malformed segments_info record {s!r}") from None
        if segment_id in seen:
            raise ValueError(f"{where}: duplicate segment id {segment_id} in segments_info")
        seen.add(segment_id)
        try:
            info.contiguous_id(category_id)
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{where}: segment {segment_id} has unknown category_id {category_id!r}"
            ) from None


def _segment_table(
    segments: list[dict[str, Any]], info: DatasetInfo, where: str
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``segments_info`` -> (ids sorted ``[S]``, the records in that order)."""
    check_segments_info(segments, info, where)
    ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], [segments[i] for i in order]


def image_panoptic_stats(
    gt_ids: np.ndarray,
    gt_segments: list[dict[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: list[dict[str, Any]],
    info: DatasetInfo,
    ignore_crowd_in_semantic: bool = False,
    image_name: str = "image",
    *,
    id_mask: int | None = None,
) -> PanopticStats:
    """PQ statistics and semantic confusion of one image.

    Args:
        gt_ids: ``[H, W]`` GT segment ids (0 = void). Ids absent from ``gt_segments`` are
            treated as panopticapi does: an unmatchable region that is not void.
        gt_segments: GT ``segments_info`` (``id``, ``category_id``, ``iscrowd``, ``area``).
        pred_ids: ``[H, W]`` predicted segment ids (0 = void).
        pred_segments: predicted ``segments_info`` (``id``, ``category_id``).
        info: categories; contiguous order fixes the layout of the returned arrays.
        ignore_crowd_in_semantic: treat GT crowd pixels as void in the confusion matrix
            (default: crowd keeps its class, as the dataset's semantic targets do).
        image_name: names the image in error messages.
        id_mask: keep only these bits of each value as the id. The file evaluation passes
            ``read_panoptic_rgbx``'s raw RGBX words with ``0xFFFFFF``, so that no pass over
            the image is spent dropping the fourth byte (it is masked on the runs).
    """
    if gt_ids.ndim != 2 or pred_ids.ndim != 2:
        raise ValueError(
            f"{image_name}: expected [H, W] segment id maps, got {gt_ids.shape} (ground truth) "
            f"and {pred_ids.shape} (prediction)"
        )
    if gt_ids.shape != pred_ids.shape:
        raise ValueError(
            f"{image_name}: prediction PNG size {pred_ids.shape[1]}x{pred_ids.shape[0]} (WxH) "
            f"differs from ground truth {gt_ids.shape[1]}x{gt_ids.shape[0]}"
        )
    k = info.num_classes
    gt_sorted, gt_list = _segment_table(gt_segments, info, f"{image_name} (ground truth)")
    pred_sorted, pred_list = _segment_table(pred_segments, info, f"{image_name} (prediction)")
    num_gt, num_pred = gt_sorted.size, pred_sorted.size

    gt_run, pred_run, run_length = _pair_runs(gt_ids, pred_ids, id_mask)
    # GT index: 0 = void, 1 = id unknown to segments_info, 2 + g = segment g.
    position, found = _compact_index(gt_run, gt_sorted)
    gt_index = np.where(found, position + 2, (gt_run != 0).astype(np.int64))
    # Prediction index: 0 = void, 1 + p = segment p; anything else is an error.
    position, found = _compact_index(pred_run, pred_sorted)
    unknown = ~found & (pred_run != 0)
    if unknown.any():
        bad = np.unique(pred_run[unknown])[:10].tolist()
        raise ValueError(
            f"{image_name}: prediction PNG has segment ids {bad} that are not in its segments_info"
        )
    pred_index = np.where(found, position + 1, 0)

    counts = np.bincount(
        gt_index * (num_pred + 1) + pred_index, weights=run_length,
        minlength=(num_gt + 2) * (num_pred + 1),
    ).astype(np.int64).reshape(num_gt + 2, num_pred + 1)  # [G+2, P+1] pixels per (gt, pred)

    pred_area = counts[:, 1:].sum(axis=0)  # [P]
    if num_pred and (pred_area == 0).any():
        bad = pred_sorted[pred_area == 0][:10].tolist()
        raise ValueError(
            f"{image_name}: segments_info ids {bad} of the prediction do not occur in its PNG"
        )

    gt_cat = np.array([info.contiguous_id(s["category_id"]) for s in gt_list], np.int64)
    gt_crowd = np.array([bool(s.get("iscrowd", 0)) for s in gt_list], bool)
    gt_png_area = counts[2:].sum(axis=1)
    gt_area = np.array(
        [int(s.get("area", a)) for s, a in zip(gt_list, gt_png_area, strict=True)], np.int64
    )
    pred_cat = np.array([info.contiguous_id(s["category_id"]) for s in pred_list], np.int64)

    stats = PanopticStats.zeros(k)
    stats.num_images = 1
    inter = counts[2:, 1:]  # [G, P]
    pred_on_void = counts[0, 1:]  # [P]
    candidate = (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None] & (inter > 0)
    union = pred_area[None, :] + gt_area[:, None] - inter - pred_on_void[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union  # [G, P] float64, the same division panopticapi makes
    matched = candidate & (iou > 0.5)
    gt_of_match, pred_of_match = np.nonzero(matched)
    stats.tp += np.bincount(gt_cat[gt_of_match], minlength=k)
    stats.iou += np.bincount(gt_cat[gt_of_match], weights=iou[matched], minlength=k)

    gt_matched = matched.any(axis=1)
    stats.fn += np.bincount(gt_cat[~gt_matched & ~gt_crowd], minlength=k)

    # The crowd segment that may absorb a false positive: the last one of each category in
    # segments_info order (panopticapi keeps one crowd id per category in a dict).
    crowd_of_class = np.full(k, -1, np.int64)
    sorted_position = {int(i): g for g, i in enumerate(gt_sorted)}
    for s in gt_segments:
        if s.get("iscrowd", 0):
            crowd_of_class[info.contiguous_id(s["category_id"])] = sorted_position[int(s["id"])]
    crowd = crowd_of_class[pred_cat]  # [P], -1 where the class has no crowd segment
    pred_on_crowd = np.zeros(num_pred, np.int64)
    has_crowd = np.nonzero(crowd >= 0)[0]
    pred_on_crowd[has_crowd] = inter[crowd[has_crowd], has_crowd]
    ignored = (pred_on_void + pred_on_crowd) / pred_area > 0.5
    false_positive = ~matched.any(axis=0) & ~ignored
    stats.fp += np.bincount(pred_cat[false_positive], minlength=k)

    # Semantic confusion from the pair table: each pixel takes its segment's class.
    gt_class = np.concatenate([[k, k], np.where(gt_crowd & ignore_crowd_in_semantic, k, gt_cat)])
    pred_class = np.concatenate([[k], pred_cat])
    pair_class = gt_class[:, None] * (k + 1) + pred_class[None, :]
    stats.confusion += np.bincount(
        pair_class.ravel(), weights=counts.ravel(), minlength=(k + 1) ** 2
    ).astype(np.int64).reshape(k + 1, k + 1)
    return stats


def _average(stats: PanopticStats, classes: np.ndarray) -> dict[str, float | int]:
    """panopticapi's ``pq_average`` over the contiguous classes ``classes``."""
    tp, fp, fn, iou = (a[classes] for a in (stats.tp, stats.fp, stats.fn, stats.iou))
    present = (tp + fp + fn) > 0
    n = int(present.sum())
    if n == 0:  # panopticapi divides by zero here; an empty group scores 0.
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    tp, fp, fn, iou = tp[present], fp[present], fn[present], iou[present]
    denominator = tp + 0.5 * fp + 0.5 * fn
    sq = np.divide(iou, tp, out=np.zeros_like(iou), where=tp > 0)
    return {
        "pq": float(np.sum(iou / denominator) / n),
        "sq": float(np.sum(sq) / n),
        "rq": float(np.sum(tp / denominator) / n),
        "n": n,
    }


def summarize_pq(stats: PanopticStats, info: DatasetInfo) -> dict[str, Any]:
    """``{"All", "Things", "Stuff": {pq, sq, rq, n}, "per_class": {category_id: {...}}}``.

    ``per_class`` lists every category, with zeros where it has no TP, FP or FN (as
    panopticapi does), and also its ``tp``, ``fp``, ``fn`` counts.
    """
    k = info.num_classes
    things = np.arange(info.num_thing_classes)
    result: dict[str, Any] = {
        "All": _average(stats, np.arange(k)),
        "Things": _average(stats, things),
        "Stuff": _average(stats, np.arange(info.num_thing_classes, k)),
    }
    per_class = {}
    for c, category in enumerate(info.categories):
        tp, fp, fn, iou = int(stats.tp[c]), int(stats.fp[c]), int(stats.fn[c]), stats.iou[c]
        denominator = tp + 0.5 * fp + 0.5 * fn
        per_class[category.id] = {
            "pq": float(iou / denominator) if denominator else 0.0,
            "sq": float(iou / tp) if tp else 0.0,
            "rq": float(tp / denominator) if denominator else 0.0,
            "tp": tp, "fp": fp, "fn": fn,
        }
    result["per_class"] = per_class
    return result
