"""``cmt-deeplab export``: ONNX and torch.export graphs, their sidecar, and parity with eager.

The default run exports a few small graphs (``cmt_onnx`` is in conftest.py, shared with the
predict tests) and every registered model at test width (72 s for the eight on 2 cores); the
dynamic-size graphs are ``slow``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cmt_deeplab
from _export_helpers import (
    EXPORT_SIZE,
    INFO,
    MIN_PIXEL_AGREEMENT,
    assert_logits_close,
    confident_model,
    require_onnxruntime,
    smooth_images,
)
from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.export import (
    NETWORK_OUTPUTS,
    PANOPTIC_OUTPUTS,
    Sidecar,
    export_model,
    load_exported,
    sidecar_path,
)
from cmt_deeplab.inference.post_processing import pixelwise_panoptic

SIZE = EXPORT_SIZE


def test_sidecar_describes_the_graph(cmt_onnx) -> None:
    _, _, out = cmt_onnx
    data = json.loads(sidecar_path(out).read_text())
    assert data["model"]["name"] == "cmt-deeplab-tiny"
    assert data["data"] == INFO.to_dict()
    assert data["input"]["normalization"]["formula"] == "pixel / 127.5 - 1"
    assert data["input"]["size"] == [SIZE, SIZE]
    shapes = data["input"]["shapes"]
    assert shapes["batch"] == {"min": 1, "max": 1, "step": 1, "offset": 0}
    assert shapes["height"]["min"] == shapes["height"]["max"] == SIZE
    assert data["outputs"] == list(NETWORK_OUTPUTS) and data["post_processing"] is None
    assert not list(out.parent.glob(".*tmp*"))


def test_onnxruntime_matches_eager_at_any_batch(cmt_onnx) -> None:
    model, _, out = cmt_onnx
    runner = load_exported(out, num_threads=2)
    images = smooth_images(3, SIZE, SIZE)
    with torch.no_grad():
        reference = model(images)
    for batch in (images[:1], images):  # a batch of 3 runs one image at a time
        outputs = runner(batch)
        assert set(outputs) == set(NETWORK_OUTPUTS)
        count = batch.shape[0]
        assert_logits_close(outputs, {k: v[:count] for k, v in reference.items()})
    # The panoptic maps of the two: the share of pixels with the same label.
    segments = 0
    for index in range(images.shape[0]):
        maps = [pixelwise_panoptic(o["pred_logits"][index], o["pred_masks"][index], INFO,
                                   (SIZE, SIZE)) for o in (outputs, reference)]
        segments += len(maps[1].segments_info)
        assert (maps[0].panoptic == maps[1].panoptic).mean() >= MIN_PIXEL_AGREEMENT
    assert segments >= 3


def test_a_shape_not_exported_is_an_error_naming_both(cmt_onnx) -> None:
    _, _, out = cmt_onnx
    runner = load_exported(out)
    with pytest.raises(ValueError, match=r"\[1, 3, 97, 65\].*H 65, W 65"):
        runner(torch.zeros(1, 3, 97, SIZE))
    with pytest.raises(ValueError, match="does not fit"):
        runner(torch.zeros(1, 1, SIZE, SIZE))


def test_post_processing_graph_matches_pixelwise_panoptic(tmp_path: Path) -> None:
    """The in-graph MaX post-processing gives ``pixelwise_panoptic``'s map and segments."""
    require_onnxruntime()
    model = confident_model("max-deeplab-tiny", seed=1)
    out = tmp_path / "max_panoptic.onnx"
    sidecar = export_model(model, out, size=SIZE, post_processing=True, info=INFO)
    assert sidecar.output_names == list(PANOPTIC_OUTPUTS)
    runner = load_exported(out)
    images = smooth_images(1, SIZE, SIZE, seed=2)
    outputs = runner(images)
    with torch.no_grad():
        reference = model(images)
    expected = pixelwise_panoptic(reference["pred_logits"][0], reference["pred_masks"][0], INFO,
                                  out_size=(SIZE, SIZE))
    panoptic = outputs["panoptic"][0].numpy()
    assert len(np.unique(expected.panoptic)) >= 3  # a map with segments, not all void
    agreement = float((panoptic == expected.panoptic).mean())
    assert agreement >= MIN_PIXEL_AGREEMENT, agreement
    # The slot table: segments by id, score = best slot, area = sum over its slots.
    table: dict[int, dict] = {}
    rows = zip(*(outputs[k][0].tolist() for k in PANOPTIC_OUTPUTS[1:]), strict=True)
    for segment_id, category_id, score, area in rows:
        if segment_id:
            entry = table.setdefault(segment_id, {"category_id": category_id, "score": 0.0,
                                                  "area": 0})
            entry["score"] = max(entry["score"], score)
            entry["area"] += area
    if agreement == 1.0:
        assert {s["id"]: (s["category_id"], s["area"]) for s in expected.segments_info} == {
            k: (v["category_id"], v["area"]) for k, v in table.items()}
        for segment in expected.segments_info:
            assert abs(table[segment["id"]]["score"] - segment["score"]) < 1e-4


def test_torch_export_program_matches_eager(tmp_path: Path) -> None:
    model = confident_model("cmt-deeplab-tiny", seed=3)
    out = tmp_path / "cmt.pt2"
    export_model(model, out, format="torch-export", size=SIZE, info=INFO)
    runner = load_exported(out)
    assert Sidecar.load(out).format == "torch-export"
    images = smooth_images(1, SIZE, SIZE)
    with torch.no_grad():
        reference = model(images)
    assert_logits_close(runner(images), reference)
    # The sidecar records the program's SHA-256: bytes overwritten since are refused by name
    # (a damaged program can load and fail later, or run wrong).
    data = bytearray(out.read_bytes())
    assert Sidecar.load(out).extra["model_sha256"] == hashlib.sha256(data).hexdigest()
    data[len(data) // 2:len(data) // 2 + 4000] = bytes(4000)
    out.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"exported model .*cmt.pt2 is corrupt or was replaced: "
                                         r"its SHA-256 is"):
        load_exported(out)


def test_export_errors_name_the_problem(tmp_path: Path) -> None:
    assert cli_main.main(["export", "--checkpoint", str(tmp_path / "nowhere"),
                          "--out", str(tmp_path / "m.onnx")]) == 2
    model = confident_model("cmt-deeplab-tiny")
    with pytest.raises(ValueError, match="32k\\+1.*96x96"):
        export_model(model, tmp_path / "m.onnx", size=96, dynamic_size=True, info=INFO)
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, tmp_path / "m.onnx", format="tflite", info=INFO)

    class DataDependent(torch.nn.Module):
        def forward(self, images):
            masks = images[:, :1, ::4, ::4]
            if images.sum() > 0:  # a Python branch on values: cannot be traced
                masks = -masks
            return {"pred_logits": images.new_zeros(1, 2, 8), "pred_masks": masks,
                    "pixel_feature": masks}

    with pytest.raises(ValueError, match="cannot export DataDependent as torch-export at 33x33"):
        export_model(DataDependent(), tmp_path / "m.pt2", format="torch-export", size=33,
                     info=INFO)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt2").exists()


@pytest.mark.parametrize("name", cmt_deeplab.list_models())
def test_every_registered_model_exports_with_parity(name: str, tmp_path: Path) -> None:
    """Every registered model at test width: onnxruntime against eager, outputs and map."""
    require_onnxruntime()
    model = confident_model(name)
    out = tmp_path / f"{name}.onnx"
    export_model(model, out, size=SIZE, info=INFO)
    images = smooth_images(1, SIZE, SIZE)
    outputs = load_exported(out)(images)
    with torch.no_grad():
        reference = model(images)
    assert_logits_close(outputs, reference)
    maps = [pixelwise_panoptic(o["pred_logits"][0], o["pred_masks"][0], INFO, (SIZE, SIZE))
            .panoptic for o in (outputs, reference)]
    assert (maps[0] == maps[1]).mean() >= MIN_PIXEL_AGREEMENT


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cmt-deeplab-tiny", "max-deeplab-tiny"])
def test_dynamic_size_graph_runs_every_32k_plus_1_size(name: str, tmp_path: Path) -> None:
    require_onnxruntime()
    model = confident_model(name)
    out = tmp_path / "dynamic.onnx"
    export_model(model, out, size=(97, 65), dynamic_batch=True, dynamic_size=True, info=INFO)
    runner = load_exported(out)
    for shape in [(2, 3, 65, 65), (1, 3, 97, 65), (3, 3, 65, 129)]:
        images = smooth_images(*shape[:1], *shape[2:])
        with torch.no_grad():
            reference = model(images)
        assert_logits_close(runner(images), reference)
    with pytest.raises(ValueError, match="32k\\+1"):
        runner(torch.zeros(1, 3, 66, 65))


@pytest.mark.slow
def test_dynamic_post_processing_graph_matches_pixelwise_panoptic(tmp_path: Path) -> None:
    """Area limits and upsampling follow the input size inside a dynamic graph."""
    require_onnxruntime()
    model = confident_model("max-deeplab-tiny", seed=1)
    out = tmp_path / "dynamic_panoptic.onnx"
    export_model(model, out, size=(97, 65), dynamic_batch=True, dynamic_size=True,
                 post_processing=True, info=INFO)
    runner = load_exported(out)
    for shape in [(2, 65, 65), (1, 97, 65), (1, 65, 129)]:
        images = smooth_images(*shape, seed=2)
        panoptic = runner(images)["panoptic"].numpy()
        with torch.no_grad():
            reference = model(images)
        for index in range(shape[0]):
            expected = pixelwise_panoptic(reference["pred_logits"][index],
                                          reference["pred_masks"][index], INFO, shape[1:])
            assert len(expected.segments_info) >= 2
            assert (panoptic[index] == expected.panoptic).mean() >= MIN_PIXEL_AGREEMENT
