"""Malformed predictions are refused with an error naming the image, file, id or value."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from cmt_deeplab.data.panoptic_png import read_panoptic_png, write_panoptic_png
from cmt_deeplab.evaluation import (
    evaluate_panoptic,
    image_panoptic_stats,
    panoptic_eval,
    pq_compute,
)
from cmt_deeplab.evaluation.random_pairs import write_random_dataset


@pytest.fixture()
def dataset(tmp_path: Path) -> dict:
    paths = write_random_dataset(tmp_path, num_images=3, height=16, width=20, seed=5, scale=2)
    return {
        **paths,
        "gt": json.loads(paths["gt_json"].read_text()),
        "pred": json.loads(paths["pred_json"].read_text()),
    }


def _evaluate(dataset: dict, pred: dict | None = None, gt: dict | None = None, **kwargs):
    return pq_compute(gt or dataset["gt"], pred or dataset["pred"], dataset["gt_dir"],
                      dataset["pred_dir"], num_workers=kwargs.pop("num_workers", 0), **kwargs)


def test_valid_inputs_evaluate(dataset: dict) -> None:
    by_path = _evaluate(dataset)
    by_dict = pq_compute(dataset["gt_json"], dataset["pred_json"], dataset["gt_dir"],
                         dataset["pred_dir"], num_workers=0)
    assert by_path == by_dict
    assert 0.0 <= by_path["All"]["pq"] <= 1.0


def test_duplicate_prediction_image_id(dataset: dict) -> None:
    pred = copy.deepcopy(dataset["pred"])
    pred["annotations"].append(copy.deepcopy(pred["annotations"][1]))
    with pytest.raises(ValueError, match="prediction JSON has two annotations for image id 1"):
        _evaluate(dataset, pred)


def test_ground_truth_image_without_prediction(dataset: dict) -> None:
    pred = copy.deepcopy(dataset["pred"])
    del pred["annotations"][2]
    with pytest.raises(ValueError, match=r"1 ground-truth image\(s\) have no prediction.*\[2\]"):
        _evaluate(dataset, pred)


def test_extra_predictions_are_ignored(dataset: dict) -> None:
    pred = copy.deepcopy(dataset["pred"])
    pred["annotations"].append({**pred["annotations"][0], "image_id": 99})
    assert _evaluate(dataset, pred) == _evaluate(dataset)


def test_png_id_missing_from_segments_info(dataset: dict) -> None:
    pred = copy.deepcopy(dataset["pred"])
    removed = pred["annotations"][0]["segments_info"].pop()
    with pytest.raises(ValueError, match=rf"image 0 .*000000\.png.*\[{removed['id']}\].*not in"):
        _evaluate(dataset, pred)


def test_segments_info_id_missing_from_png(dataset: dict) -> None:
    pred = copy.deepcopy(dataset["pred"])
    pred["annotations"][1]["segments_info"].append({"id": 123456, "category_id": 1})
    with pytest.raises(ValueError, match=r"image 1 .*\[123456\] .*do not occur in its PNG"):
        _evaluate(dataset, pred)


def test_unknown_category_id(dataset: dict) -> None:
    pred = copy.deepcopy(dataset["pred"])
    segment = pred["annotations"][2]["segments_info"][0]
    segment["category_id"] = 4242
    with pytest.raises(ValueError,
                       match=rf"image 2 .*segment {segment['id']} has unknown category_id 4242"):
        _evaluate(dataset, pred)


def test_duplicate_segment_id(dataset: dict) -> None:
    pred = copy.deepcopy(dataset["pred"])
    segments = pred["annotations"][0]["segments_info"]
    segments.append(dict(segments[0]))
    with pytest.raises(ValueError, match=rf"duplicate segment id {segments[0]['id']}"):
        _evaluate(dataset, pred)


def test_png_size_differs_from_ground_truth(dataset: dict) -> None:
    png = dataset["pred_dir"] / "000001.png"
    write_panoptic_png(png, read_panoptic_png(png)[:, :-2])
    with pytest.raises(ValueError, match=r"image 1 .*size 18x16 \(WxH\) differs .* 20x16"):
        _evaluate(dataset)


def test_missing_png_file(dataset: dict) -> None:
    (dataset["pred_dir"] / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"prediction PNG of image 2 not found: .*000002"):
        _evaluate(dataset)
    with pytest.raises(FileNotFoundError, match="prediction PNG folder not found"):
        pq_compute(dataset["gt"], dataset["pred"], dataset["gt_dir"], "/nonexistent/dir")


def test_unreadable_png(dataset: dict) -> None:
    (dataset["pred_dir"] / "000001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read panoptic PNG .*000001\.png"):
        _evaluate(dataset)


def test_missing_or_malformed_json(dataset: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prediction JSON not found: .*nope.json"):
        pq_compute(dataset["gt_json"], tmp_path / "nope.json", dataset["gt_dir"],
                   dataset["pred_dir"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read prediction JSON .*bad.json"):
        pq_compute(dataset["gt_json"], tmp_path / "bad.json", dataset["gt_dir"],
                   dataset["pred_dir"])
    with pytest.raises(ValueError, match="no 'annotations' list"):
        pq_compute(dataset["gt_json"], {"images": []}, dataset["gt_dir"], dataset["pred_dir"])
    pred = copy.deepcopy(dataset["pred"])
    del pred["annotations"][0]["file_name"]
    with pytest.raises(ValueError, match="annotation of image 0 has no 'file_name'"):
        _evaluate(dataset, pred)
    pred = copy.deepcopy(dataset["pred"])
    pred["annotations"][1]["segments_info"] = None
    with pytest.raises(ValueError, match="segments_info of image 1 is not a list"):
        _evaluate(dataset, pred)


def test_worker_errors_reach_the_caller(dataset: dict, monkeypatch) -> None:
    """Pixel-level checks run in the pool; their errors keep type and message."""
    monkeypatch.setattr(panoptic_eval, "_GROUP_SIZE", 1)  # 3 groups: the pool does run
    pred = copy.deepcopy(dataset["pred"])
    pred["annotations"][1]["segments_info"].append({"id": 777, "category_id": 1})
    with pytest.raises(ValueError, match=r"\[777\]"):
        evaluate_panoptic(dataset["gt"], pred, dataset["gt_dir"], dataset["pred_dir"],
                          num_workers=2)


def test_in_memory_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"expected \[H, W\]"):
        image_panoptic_stats(np.zeros((2, 2, 3)), [], np.zeros((2, 2, 3)), [], None)
