"""``cmt-deeplab predict`` end to end on generated images with the deterministic colour model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _fakes import INFO, ColourModel, scene
from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.cli import predict
from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.panoptic_png import read_panoptic_png
from cmt_deeplab.inference.predictor import Predictor
from cmt_deeplab.utils.io import atomic_write_json

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
SEGMENT_KEYS = {"id", "category_id", "iscrowd", "bbox", "area", "score"}


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(scene(45, 70)).save(folder / "000000000042.png")
    Image.fromarray(scene(60, 40)).save(folder / "street.jpg", quality=95)
    Image.fromarray(scene(33, 33)).save(folder / "square.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture()
def fake_model(monkeypatch: pytest.MonkeyPatch) -> ColourModel:
    """Replaces model loading with the colour model; counts the images it sees."""
    model = ColourModel()
    monkeypatch.setattr(predict, "load_model", lambda args, device: (model, INFO, 641))
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["predict"])
    return model


def cli(*argv: str) -> int:
    return cli_main.main(["predict", *argv])


def images_seen(model: ColourModel) -> int:
    return sum(shape[0] for shape in model.input_shapes)


def test_end_to_end_outputs(images: Path, tmp_path: Path, fake_model: ColourModel) -> None:
    out = tmp_path / "out"
    assert cli("--model", "fake", "--input", str(images), "--output", str(out),
               "--batch-size", "2", "--size", "33", "--overlay", "--device", "cpu") == 0
    data = json.loads((out / "predictions.json").read_text())
    assert list(data) == ["annotations"]
    annotations = data["annotations"]
    # Sorted input order; ids from the stem, as an int when all digits.
    assert [(a["image_id"], a["file_name"]) for a in annotations] == [
        (42, "000000000042.png"), ("square", "square.png"), ("street", "street.png")]
    predictor = Predictor(ColourModel(), INFO, size=33, device="cpu")
    for annotation, source in zip(annotations, ["000000000042.png", "square.png", "street.jpg"],
                                  strict=True):
        panoptic = read_panoptic_png(out / "panoptic" / annotation["file_name"])
        image = np.asarray(Image.open(images / source).convert("RGB"))
        np.testing.assert_array_equal(panoptic, predictor(image).panoptic)
        segments = annotation["segments_info"]
        assert segments and all(set(s) == SEGMENT_KEYS and s["iscrowd"] == 0 for s in segments)
        # Every PNG id is listed and every listed id is in the PNG, with its area.
        ids, counts = np.unique(panoptic[panoptic > 0], return_counts=True)
        assert {s["id"]: s["area"] for s in segments} == dict(zip(ids.tolist(), counts.tolist(),
                                                                  strict=True))
        with Image.open(out / "overlay" / f"{Path(source).stem}.jpg") as overlay:
            assert overlay.size == (image.shape[1], image.shape[0])
    assert images_seen(fake_model) == 3
    assert not list(out.rglob("*.tmp"))


def test_resume_skips_finished_images(images: Path, tmp_path: Path, fake_model: ColourModel,
                                      capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    args = ["--model", "fake", "--input", str(images), "--output", str(out), "--size", "33"]
    # With no minimum interval the JSON grows after every batch, then is written once more.
    written = []
    monkeypatch.setattr(predict, "_SAVE_INTERVAL_S", 0.0)
    monkeypatch.setattr(predict, "atomic_write_json", lambda path, obj, indent=None: (
        written.append(len(obj["annotations"])), atomic_write_json(path, obj, indent)))
    assert cli(*args) == 0 and images_seen(fake_model) == 3
    assert written == [1, 2, 3, 3]
    assert cli(*args) == 0 and images_seen(fake_model) == 3  # nothing to do
    assert "predicted 0 image(s), 3 already done" in capsys.readouterr().out
    (out / "panoptic" / "square.png").unlink()  # a PNG lost: only that image again
    assert cli(*args) == 0 and images_seen(fake_model) == 4
    assert len(json.loads((out / "predictions.json").read_text())["annotations"]) == 3
    assert cli(*args, "--overwrite") == 0 and images_seen(fake_model) == 7


def test_interrupted_run_leaves_whole_files(images: Path, tmp_path: Path,
                                            fake_model: ColourModel) -> None:
    out = tmp_path / "out"
    forward = fake_model.forward

    def interrupted(batch):
        if fake_model.input_shapes:  # the second batch
            raise KeyboardInterrupt
        return forward(batch)

    fake_model.forward = interrupted
    args = ["--model", "fake", "--input", str(images), "--output", str(out), "--size", "33",
            "--batch-size", "2"]
    assert cli(*args) == 130
    listed = [a["file_name"] for a in json.loads((out / "predictions.json").read_text())[
        "annotations"]]
    assert listed == ["000000000042.png", "square.png"]
    assert sorted(p.name for p in (out / "panoptic").iterdir()) == listed
    fake_model.forward = forward
    assert cli(*args) == 0
    assert images_seen(fake_model) == 3  # 2 before the interruption, then only the third
    assert len(json.loads((out / "predictions.json").read_text())["annotations"]) == 3


def test_bad_image_fails_or_is_skipped(images: Path, tmp_path: Path, fake_model: ColourModel,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG")
    out = tmp_path / "out"
    args = ["--model", "fake", "--input", str(images), "--output", str(out), "--size", "33"]
    assert cli(*args) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert cli(*args, "--skip-bad") == 0
    skipped = json.loads((out / "skipped.json").read_text())
    assert [Path(s["file"]).name for s in skipped] == ["broken.jpg"]
    assert "broken.jpg" in skipped[0]["error"]
    names = [a["file_name"] for a in json.loads((out / "predictions.json").read_text())[
        "annotations"]]
    assert names == ["000000000042.png", "square.png", "street.png"]


def test_image_info_glob_and_single_file(images: Path, tmp_path: Path, fake_model: ColourModel,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    info = tmp_path / "images.json"
    info.write_text(json.dumps({"images": [
        {"id": 7, "file_name": "street.jpg", "height": 60, "width": 40},
        {"id": 9, "file_name": "sub/square.png", "height": 33, "width": 33},
    ]}))
    out = tmp_path / "out"
    assert cli("--model", "fake", "--input", str(images / "s*"), "--output", str(out),
               "--size", "33", "--image-info", str(info)) == 0
    annotations = json.loads((out / "predictions.json").read_text())["annotations"]
    assert [(a["image_id"], a["file_name"]) for a in annotations] == [
        (9, "square.png"), (7, "street.png")]
    # An input missing from the image info is named.
    assert cli("--model", "fake", "--input", str(images / "000000000042.png"), "--output",
               str(out), "--image-info", str(info)) == 2
    assert "000000000042.png" in capsys.readouterr().err
    single = tmp_path / "single"
    assert cli("--model", "fake", "--input", str(images / "street.jpg"), "--output",
               str(single), "--size", "33", "--method", "maskwise") == 0
    assert (single / "panoptic" / "street.png").is_file()
    for bad_input in (str(images / "nothing*.png"), str(tmp_path / "missing.jpg")):
        assert cli("--model", "fake", "--input", bad_input, "--output", str(out)) == 2
        assert Path(bad_input).name in capsys.readouterr().err


def test_argument_errors(images: Path, tmp_path: Path, fake_model: ColourModel,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert cli("--model", "fake", "--input", str(images), "--output", out, "--size", "big") == 2
    assert "--size" in capsys.readouterr().err
    Image.fromarray(scene(10, 10)).save(images / "street.png")  # same stem as street.jpg
    assert cli("--model", "fake", "--input", str(images), "--output", out) == 2
    assert "street.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --checkpoint and --model exclude each other
        cli("--model", "fake", "--checkpoint", "x", "--input", str(images), "--output", out)


def test_coco_sample_predictions_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Predictions on the real COCO sample are valid input for ``pq_compute``: against the
    COCO ground truth, and against themselves as ground truth (PQ exactly 1)."""
    if not SAMPLE.is_dir():
        pytest.skip(f"COCO panoptic sample not found at {SAMPLE}")
    evaluation = pytest.importorskip("cmt_deeplab.evaluation")
    coco = DatasetInfo.from_json(SAMPLE / "panoptic_coco_categories.json")
    monkeypatch.setattr(predict, "load_model", lambda args, device: (ColourModel(coco), coco, 641))
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["predict"])
    out = tmp_path / "out"
    assert cli("--model", "fake", "--input", str(SAMPLE / "input_images"), "--output", str(out),
               "--size", "161", "--image-info", str(SAMPLE / "images_info_examples.json")) == 0
    gt_json = SAMPLE / "panoptic_examples.json"
    result = evaluation.pq_compute(gt_json, out / "predictions.json", SAMPLE / "panoptic_examples",
                                   out / "panoptic", num_workers=0)
    assert 0.0 <= result["All"]["pq"] <= 1.0
    predictions = json.loads((out / "predictions.json").read_text())
    gt = json.loads(gt_json.read_text())
    self_gt = {"images": gt["images"], "annotations": predictions["annotations"],
               "categories": gt["categories"]}
    result = evaluation.pq_compute(self_gt, predictions, out / "panoptic", out / "panoptic",
                                   num_workers=0)
    assert result["All"]["pq"] == pytest.approx(1.0) and result["All"]["n"] > 0


def test_registered_model_end_to_end(images: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import cmt_deeplab

    if not hasattr(cmt_deeplab, "build_model"):
        pytest.skip("cmt_deeplab.build_model (model registry) is not available yet")
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["predict"])
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps(INFO.to_dict()["categories"]))
    out = tmp_path / "out"
    assert cli("--model", "cmt-deeplab-tiny", "--categories", str(categories), "--input",
               str(images / "square.png"), "--output", str(out), "--size", "65",
               "--device", "cpu") == 0
    annotation = json.loads((out / "predictions.json").read_text())["annotations"][0]
    panoptic = read_panoptic_png(out / "panoptic" / "square.png")
    assert panoptic.shape == (33, 33)
    assert sorted(s["id"] for s in annotation["segments_info"]) == sorted(
        np.unique(panoptic[panoptic > 0]).tolist())


def test_overlay_blends_contours_and_names() -> None:
    from cmt_deeplab.visualization.overlay import draw_overlay, segment_colours

    image = np.full((60, 80, 3), 100, dtype=np.uint8)
    panoptic = np.zeros((60, 80), dtype=np.int64)
    panoptic[:, 40:] = 2560        # sky on the right half
    panoptic[10:50, 5:35] = 257    # a person on the left, void around it
    segments = [{"id": 257, "category_id": 1, "isthing": True},
                {"id": 2560, "category_id": 10, "isthing": False}]
    overlay = np.asarray(draw_overlay(image, panoptic, segments, INFO, alpha=0.5, labels=False))
    assert overlay.shape == (60, 80, 3)
    np.testing.assert_array_equal(overlay[0, 0], [100, 100, 100])  # void: untouched
    sky = np.rint((np.array([100, 100, 100]) + np.array([70, 130, 180])) / 2)
    np.testing.assert_array_equal(overlay[30, 60], sky)  # stuff: its category colour
    person = segment_colours(segments, INFO)[257]
    np.testing.assert_array_equal(overlay[30, 20], np.rint((100 + np.array(person)) / 2))
    # Contours run along the segments' own border pixels, void stays untouched.
    np.testing.assert_array_equal(overlay[30, 34], [255, 255, 255])
    np.testing.assert_array_equal(overlay[30, 40], [255, 255, 255])
    np.testing.assert_array_equal(overlay[30, 39], [100, 100, 100])
    named = np.asarray(draw_overlay(image, panoptic, segments, INFO, alpha=0.5))
    changed = np.argwhere((named != overlay).any(axis=2))
    # Both names were written, each around its segment's most interior point.
    person_text = changed[changed[:, 1] < 38]
    sky_text = changed[changed[:, 1] >= 42]
    assert len(person_text) > 10 and len(sky_text) > 10
    assert abs(person_text[:, 0].mean() - 30) < 6 and abs(sky_text[:, 0].mean() - 30) < 6


def test_checkpoint_directory_end_to_end(images: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import cmt_deeplab
    from cmt_deeplab import model_dir

    torch.manual_seed(0)
    model = cmt_deeplab.build_model("max-deeplab-tiny", num_classes=INFO.num_classes,
                                    num_thing_classes=INFO.num_thing_classes)
    directory = model_dir.save_model_dir(tmp_path / "ckpt", model, {
        "data": INFO.to_dict(), "input": {"crop": [97, 97], "eval_size": [65, 65]}})
    # Thresholds at 0 so that the random model's maps are not all void.
    loose = {"class_threshold": 0.0, "pixel_threshold": 0.0, "thing_area_limit": 0,
             "stuff_area_limit": 0}
    predictor = Predictor.from_checkpoint(directory, device="cpu", **loose)
    assert predictor.canvas == (65, 65) and predictor.info.to_dict() == INFO.to_dict()
    image = scene(45, 70)
    direct = Predictor(model, INFO, size=65, device="cpu", **loose)(image).panoptic
    np.testing.assert_array_equal(predictor(image).panoptic, direct)

    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["predict"])
    out = tmp_path / "out"
    assert cli("--checkpoint", str(directory), "--input", str(images / "street.jpg"),
               "--output", str(out), "--device", "cpu") == 0
    assert read_panoptic_png(out / "panoptic" / "street.png").shape == (60, 40)
    assert cli("--checkpoint", str(tmp_path / "nowhere"), "--input", str(images),
               "--output", str(out)) == 2
    assert "nowhere" in capsys.readouterr().err
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps(INFO.to_dict()))
    assert cli("--model", "no-such-model", "--categories", str(categories),
               "--input", str(images), "--output", str(out)) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_precision_and_compile_flags_reach_the_predictor(images: Path, tmp_path: Path,
                                                         fake_model: ColourModel,
                                                         monkeypatch) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(kw) or model)
    out = tmp_path / "out"
    assert cli("--model", "fake", "--input", str(images), "--output", str(out), "--size", "33",
               "--device", "cpu", "--precision", "bf16", "--compile") == 0
    assert compiled == [{"dynamic": False}]
    assert len(json.loads((out / "predictions.json").read_text())["annotations"]) == 3


def test_cpu_runs_keep_freed_memory(images: Path, tmp_path: Path, fake_model: ColourModel,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU predict run tunes glibc once its predictor exists; a run with nothing left to do
    builds none and tunes nothing."""
    from cmt_deeplab.cli import common

    calls = []
    monkeypatch.setattr(common, "keep_freed_memory", lambda: calls.append(True))
    out = tmp_path / "out"
    assert cli("--model", "fake", "--input", str(images), "--output", str(out),
               "--size", "33", "--device", "cpu") == 0
    assert calls == [True]
    # Everything done already: no predictor, no tuning.
    assert cli("--model", "fake", "--input", str(images), "--output", str(out),
               "--size", "33", "--device", "cpu") == 0
    assert calls == [True]
