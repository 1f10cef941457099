"""Clustering / attention visualisation: maps, density measures, figures, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import cmt_deeplab
from cmt_deeplab.cli.main import main
from cmt_deeplab.data.metadata import coco_panoptic_info
from cmt_deeplab.visualization.colormap import jet, to_cam_scale
from cmt_deeplab.visualization.maps import map_density
from cmt_deeplab.visualization.visualize import save_visualization, visualize


def test_density_of_uniform_and_peaked_maps():
    uniform = map_density(np.ones((10, 10)))
    assert uniform["entropy"] == pytest.approx(np.log(100))
    assert uniform["frac_above_10pct"] == 1.0
    peaked = np.zeros((10, 10))
    peaked[3, 4] = 1.0
    assert map_density(peaked) == {"entropy": 0.0, "frac_above_10pct": 0.01}


def test_cam_scale_is_min_max_without_smoothing():
    values = np.array([[1.0, 2.0], [3.0, 5.0]])
    assert to_cam_scale(values).tolist() == [[0, 64], [128, 255]]
    assert jet(np.array([0, 255])).tolist() == [[0, 0, 128], [128, 0, 0]]


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(60, 90, 3), dtype=np.uint8)


def test_visualize_cmt_with_max_comparison(image, tmp_path):
    torch.manual_seed(0)
    info = coco_panoptic_info()
    cmt = cmt_deeplab.build_model("cmt-deeplab-tiny", num_slots=16).eval()
    max_model = cmt_deeplab.build_model("max-deeplab-tiny", num_slots=16).eval()
    result = visualize(cmt, info, image, size=65, slots=[2, 5], compare_model=max_model, device="cpu")
    assert result.maps.slots == [2, 5]
    clustering = result.maps.maps["clustering"]
    assert len(clustering) == cmt.num_layers and all(m.shape[0] == 2 for m in clustering)
    # Padding is cropped: the 60x90 image fills 43x65 of the 65x65 canvas.
    assert clustering[-1].shape[1] < clustering[-1].shape[2]
    assert "clustering" not in result.compare.maps and "attention" in result.compare.maps
    kinds = {(r["kind"], r["layer"]) for r in result.density}
    assert ("clustering", 1) in kinds and ("attention", cmt.num_layers) in kinds
    written = save_visualization(result, tmp_path)
    assert {p.name for p in written} >= {"clustering.png", "attention.png", "side_by_side.png",
                                         "compare_attention.png", "density.csv", "maps.npz"}
    with Image.open(tmp_path / "side_by_side.png") as figure:
        assert figure.width > 3 * 100
    rows = json.loads((tmp_path / "density.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"main", "compare"}


def test_visualize_cli(image, tmp_path, capsys):
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    code = main(["visualize", "--model", "cmt-deeplab-tiny", "--image", str(path), "--size", "65",
                 "--slots", "0,1", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "clustering" in capsys.readouterr().out
    assert (tmp_path / "out" / "clustering.png").exists()
    assert main(["visualize", "--model", "cmt-deeplab-tiny", "--image", str(path), "--size", "65",
                 "--slots", "999", "--out", str(tmp_path / "bad")]) == 2
    assert "out of range" in capsys.readouterr().err
