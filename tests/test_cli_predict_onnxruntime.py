"""``cmt-deeplab predict --backend onnxruntime``: an exported graph writes the files that the
PyTorch path writes (PNGs, predictions.json, overlays) for the same images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _export_helpers import MIN_PIXEL_AGREEMENT, smooth_images
from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.data.panoptic_png import read_panoptic_png
from cmt_deeplab.export import sidecar_path


def cli(*argv: str) -> int:
    return cli_main.main(["predict", *argv])


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """Three images of other sizes than the canvas (resized, padded, resized back)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, (height, width) in enumerate([(65, 65), (48, 80), (90, 52)]):
        pixels = (smooth_images(1, height, width, seed=index)[0] + 1) * 127.5
        array = pixels.permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        Image.fromarray(array).save(folder / f"photo{index}.png")
    return folder


def test_onnxruntime_writes_the_files_of_the_pytorch_path(cmt_onnx, photos: Path,
                                                          tmp_path: Path) -> None:
    _, checkpoint, model_file = cmt_onnx
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    assert cli("--checkpoint", str(checkpoint), "--input", str(photos), "--output",
               str(torch_out), "--overlay", "--device", "cpu", "--batch-size", "2") == 0
    assert cli("--backend", "onnxruntime", "--model-file", str(model_file), "--input",
               str(photos), "--output", str(onnx_out), "--overlay", "--batch-size", "2") == 0

    expected = json.loads((torch_out / "predictions.json").read_text())["annotations"]
    actual = json.loads((onnx_out / "predictions.json").read_text())["annotations"]
    assert [a["file_name"] for a in actual] == [a["file_name"] for a in expected]
    segments_seen = 0
    for want, got in zip(expected, actual, strict=True):
        name = want["file_name"]
        reference = read_panoptic_png(torch_out / "panoptic" / name)
        panoptic = read_panoptic_png(onnx_out / "panoptic" / name)
        assert panoptic.shape == reference.shape
        assert (panoptic == reference).mean() >= MIN_PIXEL_AGREEMENT
        segments_seen += len(want["segments_info"])
        assert [(s["id"], s["category_id"]) for s in got["segments_info"]] == [
            (s["id"], s["category_id"]) for s in want["segments_info"]]
        for mine, theirs in zip(got["segments_info"], want["segments_info"], strict=True):
            assert abs(mine["score"] - theirs["score"]) < 1e-3
            assert abs(mine["area"] - theirs["area"]) <= 0.001 * panoptic.size
        stem = Path(name).stem
        with Image.open(onnx_out / "overlay" / f"{stem}.jpg") as image, \
                Image.open(torch_out / "overlay" / f"{stem}.jpg") as reference_image:
            difference = np.abs(np.asarray(image, np.int16) - np.asarray(reference_image, np.int16))
            assert image.size == reference_image.size and difference.mean() < 1.0
    assert segments_seen >= 3  # the maps hold segments: the comparison is not of empty maps


def test_backend_errors_name_the_problem(cmt_onnx, photos: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, checkpoint, model_file = cmt_onnx
    out = str(tmp_path / "out")
    cases = [
        (["--backend", "onnxruntime", "--checkpoint", str(checkpoint)], "--model-file"),
        (["--model-file", str(model_file)], "--backend onnxruntime"),
        (["--backend", "onnxruntime", "--model-file", str(model_file), "--precision", "bf16"],
         "--precision"),
        (["--backend", "onnxruntime", "--model-file", str(model_file), "--size", "97"],
         "H 65, W 65"),
        (["--backend", "torch-export", "--model-file", str(model_file)], "is a onnx export"),
        (["--backend", "onnxruntime", "--model-file", str(tmp_path / "none.onnx")],
         "none.onnx"),
    ]
    for flags, message in cases:
        assert cli(*flags, "--input", str(photos), "--output", out) == 2, flags
        assert message in capsys.readouterr().err, flags
    assert not Path(out, "panoptic").exists()


def test_post_processed_graph_is_refused_by_predict(cmt_onnx, photos: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """predict needs the network outputs; a graph ending in the panoptic map says so."""
    _, _, model_file = cmt_onnx
    copy = tmp_path / "panoptic.onnx"
    shutil.copyfile(model_file, copy)
    sidecar = json.loads(sidecar_path(model_file).read_text())
    sidecar["post_processing"] = {"method": "pixelwise"}
    sidecar_path(copy).write_text(json.dumps(sidecar))
    assert cli("--backend", "onnxruntime", "--model-file", str(copy), "--input",
               str(photos), "--output", str(tmp_path / "out")) == 2
    assert "--with-post-processing" in capsys.readouterr().err
