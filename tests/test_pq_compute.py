"""PQ equal to panopticapi (as carried by cityscapesscripts), hand-checked rules, report helpers."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.panoptic_png import read_panoptic_png, write_panoptic_png
from cmt_deeplab.evaluation import (
    evaluate_panoptic,
    format_pq_table,
    image_panoptic_stats,
    panoptic_eval,
    pq_compute,
    summarize_pq,
    write_per_class_csv,
)
from cmt_deeplab.evaluation.random_pairs import RANDOM_CATEGORIES, write_random_dataset
from cmt_deeplab.evaluation.report import CSV_COLUMNS

COCO_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 11, "name": "road", "isthing": 0},
]
INFO = DatasetInfo.from_coco_categories(CATEGORIES)


def _reference(paths: dict[str, Path], tmp_path: Path) -> dict:
    evaluation = pytest.importorskip("cityscapesscripts.evaluation.evalPanopticSemanticLabeling")
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluation.evaluatePanoptic(
            str(paths["gt_json"]), str(paths["gt_dir"]), str(paths["pred_json"]),
            str(paths["pred_dir"]), str(tmp_path / "reference.json"),
        )


def _assert_equal_to_reference(ours: dict, reference: dict) -> None:
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == reference[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert ours[group][key] == pytest.approx(reference[group][key], abs=1e-9), group
    assert set(ours["per_class"]) == set(reference["per_class"])
    for category_id, theirs in reference["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert ours["per_class"][category_id][key] == pytest.approx(theirs[key], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_fixtures_equal_panopticapi(tmp_path: Path, seed: int, monkeypatch) -> None:
    monkeypatch.setattr(panoptic_eval, "_GROUP_SIZE", 3)  # 4 groups: the pool does run
    paths = write_random_dataset(tmp_path / "data", num_images=10, height=40, width=56,
                                 seed=seed, scale=1)
    reference = _reference(paths, tmp_path)
    ours = pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_dir"], paths["pred_dir"],
                      num_workers=2)
    _assert_equal_to_reference(ours, reference)
    # The fixture exercises every rule: matches, misses, false positives, both groups.
    counts = {key: sum(c[key] for c in ours["per_class"].values()) for key in ("tp", "fp", "fn")}
    assert min(counts.values()) > 10, counts
    assert ours["Things"]["n"] > 0 and ours["Stuff"]["n"] > 0
    gt = json.loads(paths["gt_json"].read_text())
    assert any(s["iscrowd"] for a in gt["annotations"] for s in a["segments_info"])

    in_process = pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_dir"],
                            paths["pred_dir"], num_workers=0)
    assert in_process["per_class"] == ours["per_class"]


def test_real_coco_sample_perturbed_equals_panopticapi(tmp_path: Path) -> None:
    if not (COCO_SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"COCO panoptic sample not found at {COCO_SAMPLE}")
    gt_json = json.loads((COCO_SAMPLE / "panoptic_examples.json").read_text())
    rng = np.random.default_rng(0)
    pred_dir = tmp_path / "pred"
    annotations = []
    for annotation in gt_json["annotations"]:
        ids = np.roll(read_panoptic_png(COCO_SAMPLE / "panoptic_examples" / annotation["file_name"]),
                      shift=(7, -11), axis=(0, 1))
        ids[40:120, 60:200] = 0  # predicted void
        segments = []
        for segment in annotation["segments_info"]:
            category_id = segment["category_id"]
            if rng.uniform() < 0.2:  # a wrong class
                category_id = int(rng.choice([c["id"] for c in gt_json["categories"]]))
            segments.append({"id": segment["id"], "category_id": category_id})
        present = set(np.unique(ids).tolist())
        segments = [s for s in segments if s["id"] in present]
        write_panoptic_png(pred_dir / annotation["file_name"], ids)
        annotations.append({**annotation, "segments_info": segments})
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": annotations}))
    paths = {"gt_json": COCO_SAMPLE / "panoptic_examples.json",
             "gt_dir": COCO_SAMPLE / "panoptic_examples",
             "pred_json": tmp_path / "pred.json", "pred_dir": pred_dir}
    reference = _reference(paths, tmp_path)
    ours = pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_dir"], paths["pred_dir"])
    _assert_equal_to_reference(ours, reference)
    assert 0.0 < ours["All"]["pq"] < 1.0


def test_ground_truth_as_prediction_scores_one() -> None:
    if not (COCO_SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"COCO panoptic sample not found at {COCO_SAMPLE}")
    gt_json = json.loads((COCO_SAMPLE / "panoptic_examples.json").read_text())
    result = evaluate_panoptic(gt_json, gt_json, COCO_SAMPLE / "panoptic_examples",
                               COCO_SAMPLE / "panoptic_examples", num_workers=0)
    for group in ("All", "Things", "Stuff"):
        assert (result[group]["pq"], result[group]["sq"], result[group]["rq"]) == (1.0, 1.0, 1.0)
    # Crowd segments predicted as themselves are neither matched nor false positives.
    assert sum(c["fp"] for c in result["per_class"].values()) == 0
    assert result["miou"] == 1.0
    present = {s["category_id"] for a in gt_json["annotations"] for s in a["segments_info"]
               if not s["iscrowd"]}
    assert result["All"]["n"] == len(present)


def _stats(gt, gt_segments, pred, pred_segments):
    stats = image_panoptic_stats(np.array(gt), gt_segments, np.array(pred), pred_segments, INFO)
    return summarize_pq(stats, INFO)["per_class"]


def _gt(segment_id, category_id, area, iscrowd=0):
    return {"id": segment_id, "category_id": category_id, "area": area, "iscrowd": iscrowd}


def test_iou_of_exactly_half_is_not_a_match() -> None:
    # GT person (id 1) has 3 pixels; prediction 7 covers 2 of them and 1 road pixel:
    # IoU = 2 / (3 + 3 - 2) = 0.5, not > 0.5. Prediction 8 matches road with IoU 4/5.
    gt = [[1, 1, 1, 2, 2, 2, 2, 2]]
    pred = [[9, 7, 7, 7, 8, 8, 8, 8]]
    per_class = _stats(
        gt, [_gt(1, 1, 3), _gt(2, 11, 5)], pred,
        [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 11}, {"id": 9, "category_id": 11}],
    )
    assert per_class[1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1}
    assert per_class[11]["tp"] == 1 and per_class[11]["fp"] == 1
    assert per_class[11]["pq"] == pytest.approx(0.8 / 1.5)
    assert per_class[11]["sq"] == pytest.approx(0.8)
    assert per_class[11]["rq"] == pytest.approx(2 / 3)


def test_void_is_left_out_of_the_union() -> None:
    # Prediction 7 has 4 pixels, one on GT void: IoU = 2 / (4 + 2 - 2 - 1) = 2/3 > 0.5.
    gt = [[0, 1, 1, 2, 2]]
    pred = [[7, 7, 7, 7, 8]]
    per_class = _stats(gt, [_gt(1, 1, 2), _gt(2, 11, 2)], pred,
                       [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 11}])
    assert per_class[1]["tp"] == 1 and per_class[1]["sq"] == pytest.approx(2 / 3)
    # Prediction 8 (1 road pixel of 2): IoU 1 / 2 -> a miss and a false positive.
    assert per_class[11] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1}


def test_crowd_and_void_rules_for_false_positives() -> None:
    # GT: person crowd (3) on 4 pixels, void on 4 pixels, road (2) on 4 pixels.
    gt = [[3, 3, 3, 3, 0, 0, 0, 0, 2, 2, 2, 2]]
    pred = [[5, 5, 5, 6, 6, 6, 6, 9, 9, 9, 9, 9]]
    per_class = _stats(
        gt, [_gt(3, 1, 4, iscrowd=1), _gt(2, 11, 4)], pred,
        [
            {"id": 5, "category_id": 1},  # on its class's crowd: ignored, never matched
            {"id": 6, "category_id": 2},  # 1 px crowd of another class + 3 px void: ignored
            {"id": 9, "category_id": 11},  # road: 1 px void, 4 px road -> IoU 4/4 match
        ],
    )
    assert per_class[1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert per_class[2]["fp"] == 0
    assert per_class[11]["tp"] == 1 and per_class[11]["sq"] == 1.0

    # Exactly half on void (2 of 4 pixels) is not "more than half": a false positive.
    per_class = _stats([[0, 0, 2, 2]], [_gt(2, 11, 2)], [[6, 6, 6, 6]],
                       [{"id": 6, "category_id": 2}])
    assert per_class[2]["fp"] == 1
    # Crowd of another class does not absorb: 1 px void + 2 px car crowd of 4 -> FP for person.
    per_class = _stats([[0, 4, 4, 2]], [_gt(4, 2, 2, iscrowd=1), _gt(2, 11, 1)], [[6, 6, 6, 6]],
                       [{"id": 6, "category_id": 1}])
    assert per_class[1]["fp"] == 1


def test_only_the_last_crowd_segment_of_a_class_absorbs() -> None:
    # panopticapi keeps one crowd id per category: the last one listed (here 4, not 3).
    gt = [[3, 3, 3, 4]]
    segments = [_gt(3, 1, 3, iscrowd=1), _gt(4, 1, 1, iscrowd=1)]
    per_class = _stats(gt, segments, [[6, 6, 6, 6]], [{"id": 6, "category_id": 1}])
    assert per_class[1]["fp"] == 1
    per_class = _stats(gt, segments[::-1], [[6, 6, 6, 6]], [{"id": 6, "category_id": 1}])
    assert per_class[1]["fp"] == 0


def test_groups_average_only_classes_with_tp_fp_or_fn(tmp_path: Path) -> None:
    gt = np.array([[1, 1, 2, 2]])
    write_panoptic_png(tmp_path / "gt" / "a.png", gt)
    write_panoptic_png(tmp_path / "pred" / "a.png", np.array([[5, 5, 6, 6]]))
    gt_json = {"categories": CATEGORIES, "annotations": [{
        "image_id": 1, "file_name": "a.png",
        "segments_info": [_gt(1, 1, 2), _gt(2, 1, 2)]}]}
    pred_json = {"annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [
        {"id": 5, "category_id": 1}, {"id": 6, "category_id": 2}]}]}
    result = evaluate_panoptic(gt_json, pred_json, tmp_path / "gt", tmp_path / "pred",
                               num_workers=0)
    # person: 1 TP (IoU 1) + 1 FN -> PQ 1/1.5; car: 1 FP -> 0; no stuff at all.
    assert result["All"]["n"] == 2 and result["Things"]["n"] == 2
    assert result["All"]["pq"] == pytest.approx((1 / 1.5 + 0) / 2)
    assert result["All"]["sq"] == pytest.approx(0.5)
    assert result["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert result["per_class"][10] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 0}
    assert result["num_images"] == 1


def test_rgba_and_palette_pngs_score_as_rgb(tmp_path: Path) -> None:
    """The evaluator reads raw RGBX words and masks the ids on the runs: an alpha channel that
    changes from pixel to pixel, or a palette PNG, must not change any number."""
    from PIL import Image

    paths = write_random_dataset(tmp_path / "data", num_images=3, height=24, width=20, seed=4,
                                 scale=2)
    expected = evaluate_panoptic(paths["gt_json"], paths["pred_json"], paths["gt_dir"],
                                 paths["pred_dir"], num_workers=0)
    rng = np.random.default_rng(0)
    for png in sorted(Path(paths["pred_dir"]).glob("*.png")):
        rgb = np.asarray(Image.open(png).convert("RGB"))
        alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
        Image.fromarray(np.dstack([rgb, alpha])).save(png)  # RGBA, random alpha
    for png in sorted(Path(paths["gt_dir"]).glob("*.png")):
        Image.open(png).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE,
                                                dither=Image.Dither.NONE).save(png)
        assert Image.open(png).mode == "P"
    result = evaluate_panoptic(paths["gt_json"], paths["pred_json"], paths["gt_dir"],
                               paths["pred_dir"], num_workers=0)
    assert result == expected


def test_format_table_and_per_class_csv(tmp_path: Path) -> None:
    paths = write_random_dataset(tmp_path / "data", num_images=2, height=16, width=16, seed=3,
                                 scale=2)
    result = evaluate_panoptic(paths["gt_json"], paths["pred_json"], paths["gt_dir"],
                               paths["pred_dir"], num_workers=0)
    assert json.loads(json.dumps(result))["per_class"]  # JSON-ready as it is
    table = format_pq_table(result)
    lines = table.splitlines()
    assert [line.split("|")[0].strip() for line in lines[2:5]] == ["All", "Things", "Stuff"]
    assert lines[2].split("|")[1].split() == [
        f"{100 * result['All'][k]:.2f}" for k in ("pq", "sq", "rq")] + [str(result["All"]["n"])]
    assert lines[-1] == f"mIoU: {100 * result['miou']:.2f}"
    assert "mIoU" not in format_pq_table(pq_compute(
        paths["gt_json"], paths["pred_json"], paths["gt_dir"], paths["pred_dir"], num_workers=0))

    write_per_class_csv(tmp_path / "out" / "per_class.csv", result, RANDOM_CATEGORIES)
    with open(tmp_path / "out" / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["category_id"]) for r in rows] == [c["id"] for c in RANDOM_CATEGORIES]
    for row in rows:
        expected = result["per_class"][int(row["category_id"])]
        assert float(row["pq"]) == pytest.approx(expected["pq"], abs=1e-6)
        assert int(row["tp"]) == expected["tp"] and int(row["fn"]) == expected["fn"]
        iou = result["per_class_iou"][int(row["category_id"])]
        assert row["iou"] == ("" if iou is None else f"{iou:.6f}")
    write_per_class_csv(tmp_path / "info.csv", result,
                        DatasetInfo.from_coco_categories(RANDOM_CATEGORIES))
    rows = (tmp_path / "info.csv").read_text().splitlines()
    assert rows[0] == ",".join(CSV_COLUMNS)
    assert rows[1].startswith("1,person,1,")  # DatasetInfo order: things first
    assert rows[-1].startswith("20,wall,0,")
    with pytest.raises(KeyError, match="category id 99"):
        write_per_class_csv(tmp_path / "x.csv", result, [{"id": 99, "name": "x", "isthing": 0}])
