"""Annotation JSONs with values of the wrong type, repeated image ids and decompression-bomb
images: each is an error naming the file and the value, never a TypeError or a wrong score."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmt_deeplab.data.check import check_dataset
from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset
from cmt_deeplab.data.image_io import image_size, load_image
from cmt_deeplab.data.panoptic_png import read_panoptic_png
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.evaluate import evaluate_model


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 8x8 PNG whose header claims ``width x height`` (CRC fixed up)."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> tuple[Path, dict]:
    paths = generate_synthetic_dataset(tmp_path_factory.mktemp("data"), "val", num_images=3,
                                       size=24, seed=0, workers=1)
    return paths, json.loads(paths.annotations_json.read_text())


def _write(split, tmp_path: Path, data: dict) -> CocoPanopticDataset:
    paths, _ = split
    json_path = tmp_path / "panoptic_val.json"
    json_path.write_text(json.dumps(data))
    return CocoPanopticDataset(paths.images_dir, json_path, paths.panoptic_dir)


def _copy(split) -> dict:
    return json.loads(json.dumps(split[1]))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"][0].__setitem__("id", [1]), r"images\[0\]: 'id' must be an integer "
                                                      r"or a string, got \[1\]"),
    (lambda d: d["images"][1].__setitem__("file_name", 5), r"images\[1\]: 'file_name' must be"),
    (lambda d: d["images"][0].__setitem__("height", "24"),
     r"images\[0\]: 'height' must be a positive integer, got '24'"),
    (lambda d: d["annotations"][2].__setitem__("image_id", {"a": 1}), r"annotations\[2\]: "
                                                                     r"'image_id' must be"),
    (lambda d: d["annotations"][0].__setitem__("file_name", None), r"annotations\[0\]: "
                                                                  r"'file_name' must be"),
    (lambda d: d["annotations"][0].__setitem__("segments_info", {"id": 1}),
     r"annotations\[0\] \(image id 1\): segments_info is not a list: \{'id': 1\}"),
    (lambda d: d["images"].append(7), r"images\[3\]: malformed image record 7"),
])
def test_wrong_types_name_the_file_and_value(split, tmp_path, edit, message):
    data = _copy(split)
    edit(data)
    with pytest.raises(ValueError, match=r"panoptic_val.json: " + message):
        _write(split, tmp_path, data)


@pytest.mark.parametrize("value", [1001.5, "1001", True, None])
def test_non_integer_segment_ids_are_problems(split, tmp_path, value):
    data = _copy(split)
    segment = data["annotations"][0]["segments_info"][0]
    segment["id"] = value if value != 1001.5 else segment["id"] + 0.5
    report = check_dataset(_write(split, tmp_path, data))
    assert any("malformed segments_info entry #0: 'id' must be an integer" in message
               for _, message in report.problems), report.problems


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"].append(dict(d["images"][0], file_name="other.png")),
     "image id 1 has 2 image records"),
    (lambda d: d["annotations"].append(dict(d["annotations"][1])),
     "image id 2 has 2 annotations"),
])
def test_evaluation_refuses_repeated_image_ids(split, tmp_path, edit, message):
    data = _copy(split)
    edit(data)
    dataset = _write(split, tmp_path, data)
    assert any(message in text for _, text in check_dataset(dataset).problems)
    with pytest.raises(ValueError, match=message):
        evaluate_model(torch.nn.Identity(), dataset, 24)


def test_evaluation_refuses_an_empty_split(split, tmp_path):
    data = _copy(split)
    data["images"], data["annotations"] = [], []
    with pytest.raises(ValueError, match="no annotated images"):
        evaluate_model(torch.nn.Identity(), _write(split, tmp_path, data), 24)


def test_decompression_bombs_are_named_errors(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png())
    for read in (load_image, image_size, read_panoptic_png):
        with pytest.raises(ValueError, match=r"bomb.png: .*400000000 pixels"):
            read(path)
