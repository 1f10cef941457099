"""CityscapesPanopticDataset on a tiny Cityscapes-layout fixture (panoptic export included)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.data.cityscapes import CityscapesPanopticDataset
from cmt_deeplab.data.panoptic_png import write_panoptic_png

STEM = "aachen_000000_000019"


@pytest.fixture
def cli(monkeypatch):
    """``cli_main.main``, registering only the command modules that exist yet (the list grows
    as the project's commands land; ``data`` must be among them)."""
    import importlib.util

    present = [name for name in cli_main.COMMAND_MODULES
               if importlib.util.find_spec(f"cmt_deeplab.cli.{name}") is not None]
    assert "data" in present
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", present)
    return cli_main.main


def _instance_ids() -> np.ndarray:
    """Cityscapes ``*_instanceIds.png`` values: class id, or class id * 1000 + instance."""
    ids = np.full((8, 16), 7, dtype=np.uint16)  # road
    ids[:2] = 23  # sky
    ids[3:6, 1:5] = 26001  # car 1
    ids[3:6, 6:9] = 26002  # car 2
    ids[3:7, 10:12] = 24  # person without instance id: a crowd region
    ids[7, 14:] = 1  # ego vehicle: ignored in evaluation, becomes void
    return ids


def _write_images(root, split: str = "val") -> np.ndarray:
    city = STEM.split("_")[0]
    image_dir = root / "leftImg8bit" / split / city
    image_dir.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_dir / f"{STEM}_leftImg8bit.png")
    return pixels


def test_reads_the_cityscapesscripts_export(tmp_path, cli):
    scripts = pytest.importorskip("cityscapesscripts.preparation.createPanopticImgs")
    pixels = _write_images(tmp_path)
    gt_dir = tmp_path / "gtFine" / "val" / "aachen"
    gt_dir.mkdir(parents=True)
    ids = _instance_ids()
    Image.fromarray(ids).save(gt_dir / f"{STEM}_gtFine_instanceIds.png")
    scripts.convert2panoptic(str(tmp_path / "gtFine"), str(tmp_path / "gtFine"), False, ["val"])

    dataset = CityscapesPanopticDataset(tmp_path, "val")
    assert len(dataset) == 1
    assert dataset.info.num_classes == 19 and dataset.info.num_thing_classes == 8
    assert dataset.info.label_divisor == 1000 and dataset.info.name == "cityscapes"
    sample = dataset[0]
    assert sample["image_id"] == STEM and sample["file_name"] == f"{STEM}_leftImg8bit.png"
    np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), pixels / 127.5 - 1,
                               atol=1e-6)
    expected_panoptic = np.select(
        [ids == 7, ids == 23, ids == 26001, ids == 26002, ids == 24],
        [7000, 23000, 26001, 26002, 24000], 0)
    np.testing.assert_array_equal(sample["panoptic"].numpy(), expected_panoptic)
    np.testing.assert_array_equal(sample["void"].numpy(), (ids == 24) | (ids == 1))
    car = dataset.info.contiguous_id(26)
    person = dataset.info.contiguous_id(24)
    semantic = sample["semantic"].numpy()
    assert (semantic[ids == 24] == person).all()  # crowd keeps its class
    assert (semantic[ids == 1] == -1).all()
    assert sorted(sample["labels"].tolist()) == sorted(
        [car, car, dataset.info.contiguous_id(7), dataset.info.contiguous_id(23)])
    assert torch.equal(~sample["masks"].any(0), sample["void"])
    # The check command accepts the Cityscapes root too.
    assert cli(["data", "check", "--data", str(tmp_path), "--split", "val"]) == 0


def test_hand_written_export_and_city_folder_lookup(tmp_path):
    _write_images(tmp_path, "train")
    gt = tmp_path / "gtFine"
    ids = np.zeros((8, 16), dtype=np.int64)
    ids[:4] = 11  # building
    ids[4:, :8] = 26005  # one car
    write_panoptic_png(gt / "cityscapes_panoptic_train" / f"{STEM}_gtFine_panoptic.png", ids)
    categories = [{"id": 11, "name": "building", "isthing": 0, "color": [70, 70, 70]},
                  {"id": 26, "name": "car", "isthing": 1, "color": [0, 0, 142]}]
    (gt / "cityscapes_panoptic_train.json").write_text(json.dumps({
        "images": [{"id": STEM, "file_name": f"{STEM}_leftImg8bit.png", "height": 8,
                    "width": 16}],
        "annotations": [{"image_id": STEM, "file_name": f"{STEM}_gtFine_panoptic.png",
                         "segments_info": [
                             {"id": 11, "category_id": 11, "iscrowd": 0},
                             {"id": 26005, "category_id": 26, "iscrowd": 0}]}],
        "categories": categories,
    }))
    dataset = CityscapesPanopticDataset(tmp_path, "train")
    record = dataset.records[0]
    assert dataset.image_path(record) == (
        tmp_path / "leftImg8bit" / "train" / "aachen" / f"{STEM}_leftImg8bit.png")
    sample = dataset[0]
    assert sample["labels"].tolist() == [1, 0]  # car is contiguous 0 (things first)
    assert set(sample["panoptic"].unique().tolist()) == {0, 11000, 26001}
    with pytest.raises(FileNotFoundError, match="cityscapes_panoptic_test.json"):
        CityscapesPanopticDataset(tmp_path, "test")
