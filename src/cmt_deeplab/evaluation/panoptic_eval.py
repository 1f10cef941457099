"""Panoptic quality (and semantic mIoU) of COCO-format predictions, equal to panopticapi.

Inputs are COCO panoptic JSONs (``annotations`` with ``image_id``, ``file_name`` and
``segments_info``) and folders of panoptic PNGs. Everything that can be checked from the
JSONs is checked before any PNG is read; pixel-level checks (PNG ids vs ``segments_info``,
sizes) happen per image, in the worker processes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.panoptic_png import ID_MASK, read_panoptic_rgbx
from cmt_deeplab.evaluation.miou import semantic_miou
from cmt_deeplab.evaluation.panoptic_stats import (
    PanopticStats,
    check_segments_info,
    image_panoptic_stats,
    summarize_pq,
)
from cmt_deeplab.utils.io import read_json

JsonInput = str | Path | Mapping[str, Any]
CategoriesInput = DatasetInfo | list[dict[str, Any]] | Mapping[int, dict[str, Any]] | None


class _ImageJob(NamedTuple):
    name: str
    gt_png: Path
    gt_segments: list[dict[str, Any]]
    pred_png: Path
    pred_segments: list[dict[str, Any]]


def _load_json(source: JsonInput, what: str) -> Mapping[str, Any]:
    data = source if isinstance(source, Mapping) else read_json(source, f"{what} JSON")
    if not isinstance(data, Mapping) or not isinstance(data.get("annotations"), list):
        where = "(given as a dict)" if isinstance(source, Mapping) else str(source)
        raise ValueError(f"{what} JSON {where} has no 'annotations' list")
    return data


def _dataset_info(categories: CategoriesInput, gt_json: Mapping[str, Any]) -> DatasetInfo:
    if isinstance(categories, DatasetInfo):
        return categories
    if categories is None:
        if "categories" not in gt_json:
            raise ValueError("ground-truth JSON has no 'categories'; pass categories=")
        categories = gt_json["categories"]
    if isinstance(categories, Mapping):
        categories = list(categories.values())
    return DatasetInfo.from_coco_categories(list(categories))


def _by_image_id(annotations: list[dict[str, Any]], what: str) -> dict[Any, dict[str, Any]]:
    by_id: dict[Any, dict[str, Any]] = {}
    for annotation in annotations:
        if "image_id" not in annotation:
            raise ValueError(f"{what} JSON: an annotation has no image_id: {str(annotation)[:200]}")
        image_id = annotation["image_id"]
        if image_id in by_id:
            raise ValueError(f"{what} JSON has two annotations for image id {image_id!r}")
        for key in ("file_name", "segments_info"):
            if key not in annotation:
                raise ValueError(f"{what} JSON: annotation of image {image_id!r} has no {key!r}")
        if not isinstance(annotation["segments_info"], list):
            raise ValueError(f"{what} JSON: segments_info of image {image_id!r} is not a list")
        by_id[image_id] = annotation
    return by_id


def _image_jobs(
    gt_json: Mapping[str, Any], pred_json: Mapping[str, Any], gt_dir: Path, pred_dir: Path,
    info: DatasetInfo,
) -> list[_ImageJob]:
    """Pairs GT and predicted annotations by ``image_id`` and checks them (JSON level)."""
    for folder, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} PNG folder not found: {folder}")
    gt_by_id = _by_image_id(gt_json["annotations"], "ground-truth")
    pred_by_id = _by_image_id(pred_json["annotations"], "prediction")
    missing = [image_id for image_id in gt_by_id if image_id not in pred_by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} ground-truth image(s) have no prediction, e.g. image ids "
            f"{missing[:5]!r}"
        )
    jobs = []
    for image_id, gt in gt_by_id.items():
        pred = pred_by_id[image_id]
        gt_png, pred_png = gt_dir / gt["file_name"], pred_dir / pred["file_name"]
        for png, what in ((gt_png, "ground-truth"), (pred_png, "prediction")):
            if not png.is_file():
                raise FileNotFoundError(f"{what} PNG of image {image_id!r} not found: {png}")
        name = f"image {image_id!r}"
        check_segments_info(gt["segments_info"], info, f"{name} (ground truth {gt_png})")
        check_segments_info(pred["segments_info"], info, f"{name} (prediction {pred_png})")
        jobs.append(_ImageJob(f"{name} ({pred_png})", gt_png, gt["segments_info"], pred_png,
                              pred["segments_info"]))
    return jobs


# Set once per worker process by the pool initializer, so each job pickles only its own data.
_WORKER_STATE: dict[str, Any] = {}


def _init_worker(info: DatasetInfo, ignore_crowd_in_semantic: bool) -> None:
    _WORKER_STATE["info"] = info
    _WORKER_STATE["ignore_crowd"] = ignore_crowd_in_semantic


def _evaluate_images(jobs: list[_ImageJob]) -> PanopticStats:
    """Sum over a group of images, so that one small result crosses the process boundary
    per group rather than one ``[K+1, K+1]`` confusion per image."""
    info = _WORKER_STATE["info"]
    total = PanopticStats.zeros(info.num_classes)
    for job in jobs:
        total += image_panoptic_stats(
            # Raw RGBX words: the ids are masked on the run-length encoded pairs, not per pixel.
            read_panoptic_rgbx(job.gt_png), job.gt_segments,
            read_panoptic_rgbx(job.pred_png), job.pred_segments,
            info, _WORKER_STATE["ignore_crowd"], image_name=job.name, id_mask=ID_MASK,
        )
    return total


#: Images per group. Fixed, and groups summed in order, so that the floating-point sums (and
#: so the results, to the last bit) do not depend on ``num_workers`` or on scheduling.
_GROUP_SIZE = 16


def _accumulate(
    jobs: list[_ImageJob], info: DatasetInfo, num_workers: int, ignore_crowd_in_semantic: bool
) -> PanopticStats:
    groups = [jobs[i:i + _GROUP_SIZE] for i in range(0, len(jobs), _GROUP_SIZE)]
    total = PanopticStats.zeros(info.num_classes)
    if num_workers <= 0 or len(groups) <= 1:
        _init_worker(info, ignore_crowd_in_semantic)
        for group in groups:
            total += _evaluate_images(group)
        return total
    with multiprocessing.get_context().Pool(
        min(num_workers, len(groups)), initializer=_init_worker,
        initargs=(info, ignore_crowd_in_semantic),
    ) as pool:
        for stats in pool.imap(_evaluate_images, groups):
            total += stats
    return total


def evaluate_panoptic(
    gt_json: JsonInput,
    pred_json: JsonInput,
    gt_dir: str | Path,
    pred_dir: str | Path,
    categories: CategoriesInput = None,
    num_workers: int = 2,
    ignore_crowd_in_semantic: bool = False,
) -> dict[str, Any]:
    """PQ / SQ / RQ as panopticapi computes them, plus semantic mIoU, in one pass.

    Args:
        gt_json / pred_json: COCO panoptic JSON paths or loaded dicts. Every GT image needs
            exactly one prediction (matched by ``image_id``); extra predictions are ignored.
        gt_dir / pred_dir: folders of the PNGs named by the annotations' ``file_name``.
        categories: ``DatasetInfo``, a COCO category list or ``{id: category}``; default:
            the GT JSON's ``categories``.
        num_workers: processes reading and scoring images; 0 = in this process.
        ignore_crowd_in_semantic: count GT crowd pixels as void for mIoU (default: they
            keep their class, like the dataset's semantic targets).

    Returns:
        ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id:
        {"pq", "sq", "rq", "tp", "fp", "fn"}}, "miou": float, "per_class_iou": {category_id:
        float | None}, "num_images": int}``; values in [0, 1]; ``None`` marks a class absent
        from both GT and prediction.
    """
    gt_data = _load_json(gt_json, "ground-truth")
    pred_data = _load_json(pred_json, "prediction")
    info = _dataset_info(categories, gt_data)
    jobs = _image_jobs(gt_data, pred_data, Path(gt_dir), Path(pred_dir), info)
    stats = _accumulate(jobs, info, num_workers, ignore_crowd_in_semantic)
    result = summarize_pq(stats, info)
    miou, iou = semantic_miou(stats.confusion)
    result["miou"] = miou
    result["per_class_iou"] = {
        category.id: None if iou[c] != iou[c] else float(iou[c])  # NaN -> None
        for c, category in enumerate(info.categories)
    }
    result["num_images"] = stats.num_images
    return result


def pq_compute(
    gt_json: JsonInput,
    pred_json: JsonInput,
    gt_dir: str | Path,
    pred_dir: str | Path,
    categories: CategoriesInput = None,
    num_workers: int = 2,
) -> dict[str, Any]:
    """panopticapi's ``pq_compute``: ``{"All", "Things", "Stuff", "per_class"}`` only.

    See ``evaluate_panoptic`` for the arguments.
    """
    result = evaluate_panoptic(gt_json, pred_json, gt_dir, pred_dir, categories, num_workers)
    return {key: result[key] for key in ("All", "Things", "Stuff", "per_class")}
