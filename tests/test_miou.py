"""Semantic mIoU: the confusion helper and the one-pass evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.panoptic_png import read_panoptic_png, write_panoptic_png
from cmt_deeplab.evaluation import evaluate_panoptic, image_panoptic_stats, semantic_miou
from cmt_deeplab.evaluation.random_pairs import write_random_dataset

CATEGORIES = [
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 11, "name": "road", "isthing": 0},
]
INFO = DatasetInfo.from_coco_categories(CATEGORIES)  # contiguous order: person, sky, road


def test_semantic_miou_known_values() -> None:
    # Rows GT (person, sky, road, void), columns prediction (same order, last = void).
    confusion = np.array([
        [3, 1, 0, 1],   # person: 3 right, 1 as sky, 1 predicted void
        [0, 4, 0, 0],   # sky
        [0, 0, 0, 0],   # road: absent everywhere -> NaN, left out of the mean
        [5, 5, 0, 9],   # GT void: ignored
    ])
    miou, iou = semantic_miou(confusion)
    assert iou[0] == pytest.approx(3 / 5)
    assert iou[1] == pytest.approx(4 / 5)
    assert np.isnan(iou[2])
    assert miou == pytest.approx(0.7)


def test_semantic_miou_false_positive_only_class_counts() -> None:
    miou, iou = semantic_miou(np.array([[2, 2, 0], [0, 0, 0], [0, 0, 0]]))
    assert iou.tolist() == [0.5, 0.0]
    assert miou == pytest.approx(0.25)
    assert semantic_miou(np.zeros((3, 3)))[0] == 0.0
    with pytest.raises(ValueError, match="square"):
        semantic_miou(np.zeros((3, 4)))


def test_image_confusion_uses_segment_classes_and_ignores_void() -> None:
    gt = np.array([[0, 1, 1, 2, 2, 3]])  # void, person (1), sky (2), person crowd (3)
    pred = np.array([[5, 5, 6, 6, 0, 6]])  # 5 = person, 6 = sky, 0 = void
    gt_segments = [
        {"id": 1, "category_id": 1, "iscrowd": 0, "area": 2},
        {"id": 2, "category_id": 10, "iscrowd": 0, "area": 2},
        {"id": 3, "category_id": 1, "iscrowd": 1, "area": 1},
    ]
    pred_segments = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 10}]
    stats = image_panoptic_stats(gt, gt_segments, pred, pred_segments, INFO)
    expected = np.zeros((4, 4), np.int64)
    expected[3, 0] = 1  # GT void predicted person
    expected[0, 0] = 1  # person right
    expected[0, 1] = 2  # person (one of them crowd) predicted sky
    expected[1, 1] = 1  # sky right
    expected[1, 3] = 1  # sky predicted void
    np.testing.assert_array_equal(stats.confusion, expected)

    crowd_ignored = image_panoptic_stats(gt, gt_segments, pred, pred_segments, INFO,
                                         ignore_crowd_in_semantic=True)
    expected[0, 1], expected[3, 1] = 1, 1
    np.testing.assert_array_equal(crowd_ignored.confusion, expected)


def test_evaluate_panoptic_reports_miou(tmp_path: Path) -> None:
    write_panoptic_png(tmp_path / "gt" / "a.png", np.array([[1, 1, 2, 2], [1, 1, 2, 2]]))
    write_panoptic_png(tmp_path / "pred" / "a.png", np.array([[5, 5, 5, 6], [5, 5, 6, 6]]))
    gt_json = {"categories": CATEGORIES, "annotations": [{
        "image_id": "a", "file_name": "a.png", "segments_info": [
            {"id": 1, "category_id": 1, "iscrowd": 0, "area": 4},
            {"id": 2, "category_id": 11, "iscrowd": 0, "area": 4}]}]}
    pred_json = {"annotations": [{"image_id": "a", "file_name": "a.png", "segments_info": [
        {"id": 5, "category_id": 1}, {"id": 6, "category_id": 11}]}]}
    result = evaluate_panoptic(gt_json, pred_json, tmp_path / "gt", tmp_path / "pred",
                               num_workers=0)
    # person: 4 / 5, road: 3 / 4, sky: absent -> None.
    assert result["per_class_iou"] == {1: pytest.approx(0.8), 10: None, 11: pytest.approx(0.75)}
    assert result["miou"] == pytest.approx((0.8 + 0.75) / 2)


def test_confusion_matches_a_pixel_count(tmp_path: Path) -> None:
    """The run-length confusion equals a direct per-pixel count on random fixtures."""
    paths = write_random_dataset(tmp_path, num_images=3, height=24, width=30, seed=7, scale=1)
    result = evaluate_panoptic(paths["gt_json"], paths["pred_json"], paths["gt_dir"],
                               paths["pred_dir"], num_workers=0)
    gt_json = json.loads(paths["gt_json"].read_text())
    pred_json = json.loads(paths["pred_json"].read_text())
    info = DatasetInfo.from_coco_categories(gt_json["categories"])
    k = info.num_classes
    confusion = np.zeros((k + 1, k + 1), np.int64)
    for gt_ann, pred_ann in zip(gt_json["annotations"], pred_json["annotations"], strict=True):
        gt = read_panoptic_png(paths["gt_dir"] / gt_ann["file_name"])
        pred = read_panoptic_png(paths["pred_dir"] / pred_ann["file_name"])
        gt_class = {s["id"]: info.contiguous_id(s["category_id"]) for s in gt_ann["segments_info"]}
        pred_class = {s["id"]: info.contiguous_id(s["category_id"])
                      for s in pred_ann["segments_info"]}
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
            confusion[gt_class.get(g, k), pred_class.get(p, k)] += 1
    miou, iou = semantic_miou(confusion)
    assert result["miou"] == pytest.approx(miou, abs=1e-12)
    for c, category in enumerate(info.categories):
        expected = None if np.isnan(iou[c]) else pytest.approx(iou[c], abs=1e-12)
        assert result["per_class_iou"][category.id] == expected
