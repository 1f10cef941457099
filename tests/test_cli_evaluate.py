"""``cmt-deeplab evaluate`` end to end on the real COCO samples."""

from __future__ import annotations

import json

from cmt_deeplab.cli.main import main


def _data_args(root):
    return ["--images", str(root / "input_images"), "--annotations",
            str(root / "panoptic_examples.json"), "--panoptic-dir", str(root / "panoptic_examples")]


def test_evaluate_writes_metrics_and_per_class_csv(coco_sample, tmp_path, capsys, monkeypatch):
    from cmt_deeplab.cli import common

    tuned = []  # a CPU evaluation keeps freed memory for the next forward (cli.common)
    monkeypatch.setattr(common, "keep_freed_memory", lambda: tuned.append(True))
    code = main(["evaluate", "--model", "cmt-deeplab-tiny", *_data_args(coco_sample),
                 "--size", "129", "--output", str(tmp_path), "--device", "cpu"])
    assert code == 0 and tuned == [True]
    out = capsys.readouterr().out
    assert "Things" in out and "mIoU" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"All", "Things", "Stuff", "per_class", "miou", "num_images"} <= set(metrics)
    assert metrics["num_images"] == 2
    assert metrics["All"]["n"] == metrics["Things"]["n"] + metrics["Stuff"]["n"] > 0
    header = (tmp_path / "per_class.csv").read_text().splitlines()[0]
    assert header.startswith("category_id,name,isthing,pq")


def test_evaluate_names_missing_files(tmp_path, capsys):
    code = main(["evaluate", "--model", "cmt-deeplab-tiny", "--images", str(tmp_path),
                 "--annotations", str(tmp_path / "missing.json"), "--panoptic-dir", str(tmp_path)])
    assert code == 2
    assert "missing.json" in capsys.readouterr().err
