"""``cmt-deeplab data check`` through the CLI: clean data passes, each defect is reported."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.data.panoptic_png import read_panoptic_png, write_panoptic_png
from cmt_deeplab.data.synthetic import generate_synthetic_dataset

SAMPLE = Path("/work/shared/data/coco_panoptic_sample")


@pytest.fixture
def cli(monkeypatch):
    """``cli_main.main`` with only the command modules that exist yet (``data`` among them)."""
    present = [name for name in cli_main.COMMAND_MODULES
               if importlib.util.find_spec(f"cmt_deeplab.cli.{name}") is not None]
    assert "data" in present
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", present)
    return cli_main.main


@pytest.fixture
def synthetic(tmp_path):
    return generate_synthetic_dataset(tmp_path, "val", num_images=5, size=40, seed=7,
                                      crowd_prob=0.5)


def test_clean_synthetic_split_passes(cli, synthetic, tmp_path, capsys):
    assert cli(["data", "check", "--data", str(tmp_path), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "images: 5" in out and "problems: 0" in out and "PROBLEM" not in out
    assert "categories: 8 (4 things, 4 stuff)" in out
    data = json.loads(synthetic.annotations_json.read_text())
    circles = sum(s["category_id"] == 1 and not s["iscrowd"]
                  for a in data["annotations"] for s in a["segments_info"])
    line = next(row for row in out.splitlines() if " circle " in row)
    assert line.split()[3] == str(circles)


def test_real_coco_sample_passes_with_explicit_paths(cli, capsys):
    if not (SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"real COCO panoptic sample not found at {SAMPLE}")
    code = cli(["data", "check", "--images", str(SAMPLE / "input_images"),
                "--annotations", str(SAMPLE / "panoptic_examples.json"),
                "--panoptic-dir", str(SAMPLE / "panoptic_examples")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "images: 2" in out and "categories: 133 (80 things, 53 stuff)" in out
    assert "segments: 50 (things 40, stuff 7, crowd 3)" in out


def _edit_json(paths, edit) -> None:
    data = json.loads(paths.annotations_json.read_text())
    edit(data)
    paths.annotations_json.write_text(json.dumps(data))


def _first_segments(data):
    return data["annotations"][0]["segments_info"]


def _break(case: str, paths) -> tuple[str, str]:
    """Introduces one defect in image 1; returns (file, message pattern) the check must print."""
    png = str(paths.panoptic_dir / "000000000001.png")
    image = paths.images_dir / "000000000001.png"
    if case == "area":
        _edit_json(paths, lambda d: _first_segments(d)[0].update(area=1))
        return png, r"area 1 in the JSON, \d+ pixels in the PNG"
    if case == "bbox":
        _edit_json(paths, lambda d: _first_segments(d)[0].update(bbox=[0, 0, 1, 1]))
        return png, r"bbox \[0, 0, 1, 1\] in the JSON"
    if case == "unknown category":
        _edit_json(paths, lambda d: _first_segments(d)[0].update(category_id=99))
        return png, "unknown category id 99"
    if case == "PNG id not listed":
        _edit_json(paths, lambda d: _first_segments(d).pop())
        return png, "in the PNG are missing from segments_info"
    if case == "listed id not in PNG":
        _edit_json(paths, lambda d: _first_segments(d).append({"id": 5, "category_id": 1}))
        return png, r"segments_info ids \[5\] do not appear in the PNG"
    if case == "duplicate id":
        _edit_json(paths, lambda d: _first_segments(d).append(dict(_first_segments(d)[0])))
        return png, "overlapping segments"
    if case == "missing image":
        image.unlink()
        return str(image), "image not found"
    if case == "corrupt PNG":
        Path(png).write_bytes(b"garbage")
        return png, "cannot read panoptic PNG"
    if case == "size mismatch":
        ids = read_panoptic_png(png)
        write_panoptic_png(png, np.pad(ids, ((0, 2), (0, 0))))
        return png, r"size mismatch \(HxW\): image 40x40, PNG 42x40, JSON 40x40"
    if case == "image without annotation":
        _edit_json(paths, lambda d: d["annotations"].pop())
        return str(paths.annotations_json), "image id 5 has no annotation"
    raise AssertionError(case)


CASES = ["area", "bbox", "unknown category", "PNG id not listed", "listed id not in PNG",
         "duplicate id", "missing image", "corrupt PNG", "size mismatch",
         "image without annotation"]


@pytest.mark.parametrize("case", CASES)
def test_each_defect_is_reported_with_its_file(cli, synthetic, tmp_path, capsys, case):
    file, pattern = _break(case, synthetic)
    assert cli(["data", "check", "--data", str(tmp_path), "--split", "val"]) == 1
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert problems, out
    assert any(line.startswith(f"PROBLEM {file}:") and re.search(pattern, line)
               for line in problems), problems
    assert "problems: 0" not in out


def test_several_defects_all_counted(cli, synthetic, tmp_path, capsys):
    for case in ("area", "bbox", "missing image"):
        _break(case, synthetic)
    assert cli(["data", "check", "--data", str(tmp_path), "--split", "val",
                "--max-problems", "1"]) == 1
    out = capsys.readouterr().out
    assert out.count("PROBLEM") == 1 and "2 more problems not shown" in out
    assert "problems: 3" in out


def test_quick_mode_reads_headers_only(cli, synthetic, tmp_path, capsys):
    image = synthetic.images_dir / "000000000002.png"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    image.write_bytes(image.read_bytes()[:-30])  # truncated: header intact, data cut
    args = ["data", "check", "--data", str(tmp_path), "--split", "val"]
    assert cli(args + ["--quick"]) == 0
    assert cli(args) == 1
    assert f"PROBLEM {image}" in capsys.readouterr().out


def test_user_errors_exit_two(cli, tmp_path, capsys):
    assert cli(["data", "check", "--data", str(tmp_path), "--split", "nope"]) == 2
    assert "split 'nope' not found" in capsys.readouterr().err
    assert cli(["data", "check"]) == 2
    assert "no dataset given" in capsys.readouterr().err
