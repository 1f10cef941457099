"""CocoPanopticDataset: the sample contract on real COCO and a hand-made split, bad inputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmt_deeplab.data.arguments import add_data_arguments, dataset_from_args
from cmt_deeplab.data.cityscapes import CityscapesPanopticDataset
from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset, DataError, resolve_split
from cmt_deeplab.data.metadata import IGNORE_LABEL
from cmt_deeplab.data.panoptic_png import write_panoptic_png
from cmt_deeplab.data.transforms import TrainTransform

SAMPLE = Path("/work/shared/data/coco_panoptic_sample")

CATEGORIES = [
    {"id": 10, "name": "sky", "isthing": 0},  # stuff listed first: the reader reorders
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
]


def _image_one_ids() -> np.ndarray:
    ids = np.full((6, 8), 100, dtype=np.int64)  # stuff "sky" (category 10)
    ids[0:2, 4:8] = 201  # thing a, instance 1
    ids[2:4, 4:8] = 202  # thing a, instance 2
    ids[4, 4:8] = 301  # thing b
    ids[5, 4:6] = 203  # crowd of a
    ids[5, 6:8] = 0  # unlabeled
    return ids


def _image_two_ids() -> np.ndarray:
    ids = np.full((6, 8), 100, dtype=np.int64)
    ids[0:2, 0:2] = 301
    return ids


def _segments(ids: np.ndarray, crowd: tuple[int, ...] = ()) -> list[dict]:
    category = {100: 10, 201: 1, 202: 1, 203: 1, 301: 2}
    segments = []
    for segment_id in [i for i in (201, 202, 301, 203, 100) if (ids == i).any()]:
        rows, cols = np.nonzero(ids == segment_id)
        segments.append({
            "id": segment_id, "category_id": category[segment_id],
            "iscrowd": int(segment_id in crowd), "area": int((ids == segment_id).sum()),
            "bbox": [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1),
                     int(rows.max() - rows.min() + 1)],
        })
    return segments


def make_split(root: Path, split: str = "val") -> tuple[Path, Path, Path]:
    """A two-image split in COCO layout with known ids (image 1 has every kind of segment)."""
    images_dir = root / split
    panoptic_dir = root / "annotations" / f"panoptic_{split}"
    images_dir.mkdir(parents=True)
    panoptic_dir.mkdir(parents=True)
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    for image_id, ids in ((1, _image_one_ids()), (2, _image_two_ids())):
        pixels = np.random.default_rng(image_id).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images_dir / f"{image_id:04d}.png")
        write_panoptic_png(panoptic_dir / f"{image_id:04d}.png", ids)
        data["images"].append({"id": image_id, "file_name": f"{image_id:04d}.png",
                               "height": 6, "width": 8})
        data["annotations"].append({"image_id": image_id, "file_name": f"{image_id:04d}.png",
                                    "segments_info": _segments(ids, crowd=(203,))})
    json_path = root / "annotations" / f"panoptic_{split}.json"
    json_path.write_text(json.dumps(data))
    return images_dir, json_path, panoptic_dir


def test_hand_made_sample_has_known_values(tmp_path):
    dataset = CocoPanopticDataset(*make_split(tmp_path))
    assert len(dataset) == 2
    assert [c.name for c in dataset.info.categories] == ["a", "b", "sky"]  # things first
    sample = dataset[0]
    ids = _image_one_ids()
    assert sample["image_id"] == 1 and sample["file_name"] == "0001.png"
    assert sample["orig_size"] == (6, 8)
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 6, 8)
    pixels = np.asarray(Image.open(tmp_path / "val" / "0001.png"))
    np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), pixels / 127.5 - 1,
                               atol=1e-6)
    # Masks in segments_info order, crowd left out: a#1, a#2, b#1, sky.
    assert sample["labels"].tolist() == [0, 0, 1, 2]
    assert sample["is_thing"].tolist() == [True, True, True, False]
    assert sample["masks"].dtype == torch.bool and sample["masks"].shape == (4, 6, 8)
    for mask, segment_id in zip(sample["masks"], (201, 202, 301, 100), strict=True):
        np.testing.assert_array_equal(mask.numpy(), ids == segment_id)
    np.testing.assert_array_equal(sample["void"].numpy(), (ids == 0) | (ids == 203))
    expected_semantic = np.select(
        [ids == 100, ids == 201, ids == 202, ids == 203, ids == 301], [2, 0, 0, 0, 1],
        IGNORE_LABEL)
    np.testing.assert_array_equal(sample["semantic"].numpy(), expected_semantic)
    expected_panoptic = np.select(
        [ids == 100, ids == 201, ids == 202, ids == 203, ids == 301],
        [10 * 256, 256 + 1, 256 + 2, 256, 2 * 256 + 1], 0)  # crowd: thing class, instance 0
    np.testing.assert_array_equal(sample["panoptic"].numpy(), expected_panoptic)
    assert sample["semantic"].dtype == torch.int64 and sample["panoptic"].dtype == torch.int64


def test_label_divisor_is_used(tmp_path):
    dataset = CocoPanopticDataset(*make_split(tmp_path), label_divisor=1000)
    assert dataset.info.label_divisor == 1000
    assert set(dataset[1]["panoptic"].unique().tolist()) == {10000, 2001}


def test_two_stuff_segments_of_one_class_merge(tmp_path):
    images_dir, json_path, panoptic_dir = make_split(tmp_path)
    ids = _image_two_ids()
    ids[3:, :] = 101  # a second "sky" segment
    write_panoptic_png(panoptic_dir / "0002.png", ids)
    data = json.loads(json_path.read_text())
    data["annotations"][1]["segments_info"].append(
        {"id": 101, "category_id": 10, "iscrowd": 0})
    json_path.write_text(json.dumps(data))
    sample = CocoPanopticDataset(images_dir, json_path, panoptic_dir)[1]
    assert sample["labels"].tolist() == [1, 2]
    np.testing.assert_array_equal(sample["masks"][1].numpy(), (ids == 100) | (ids == 101))


def _corrupt(case: str, images_dir: Path, json_path: Path, panoptic_dir: Path) -> str:
    """Breaks image 1 in the way ``case`` names; returns the file the error must name."""
    data = json.loads(json_path.read_text())
    segments = data["annotations"][0]["segments_info"]
    culprit = panoptic_dir / "0001.png"
    if case == "missing image":
        (images_dir / "0001.png").unlink()
        culprit = images_dir / "0001.png"
    elif case == "corrupt image":
        (images_dir / "0001.png").write_bytes((images_dir / "0001.png").read_bytes()[:40])
        culprit = images_dir / "0001.png"
    elif case == "missing PNG":
        (panoptic_dir / "0001.png").unlink()
    elif case == "corrupt PNG":
        (panoptic_dir / "0001.png").write_bytes(b"\x89PNG broken")
    elif case == "PNG id not listed":
        segments.pop(0)  # 201 stays in the PNG
    elif case == "listed id not in PNG":
        segments.append({"id": 999, "category_id": 1, "iscrowd": 0})
    elif case == "unknown category":
        segments[0]["category_id"] = 77
    elif case == "size mismatch":
        Image.fromarray(np.zeros((7, 8, 3), dtype=np.uint8)).save(images_dir / "0001.png")
    elif case == "overlapping segments":
        segments.append(dict(segments[0]))
    else:
        raise AssertionError(case)
    json_path.write_text(json.dumps(data))
    return str(culprit)


BAD_CASES = {
    "missing image": (FileNotFoundError, "not found"),
    "corrupt image": (ValueError, "cannot read image"),
    "missing PNG": (FileNotFoundError, "not found"),
    "corrupt PNG": (ValueError, "cannot read panoptic PNG"),
    "PNG id not listed": (ValueError, r"\[201\] in the PNG are missing from segments_info"),
    "listed id not in PNG": (ValueError, r"\[999\] do not appear in the PNG"),
    "unknown category": (ValueError, "unknown category id 77"),
    "size mismatch": (ValueError, "size mismatch.*7x8.*6x8"),
    "overlapping segments": (ValueError, r"overlapping segments: segment ids \[201\]"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_item_raises_naming_file_and_id(tmp_path, case):
    paths = make_split(tmp_path)
    culprit = _corrupt(case, *paths)
    dataset = CocoPanopticDataset(*paths)
    error_type, pattern = BAD_CASES[case]
    with pytest.raises(error_type, match=pattern) as info:
        dataset[0]
    assert culprit in str(info.value) and "image id 1" in str(info.value)
    assert dataset[1]["image_id"] == 2  # the other image still loads
    with pytest.raises(ValueError, match="1 bad item"):
        dataset.validate_all()


@pytest.mark.parametrize("case", ["corrupt image", "PNG id not listed", "overlapping segments"])
def test_skip_bad_skips_with_warning_and_lists(tmp_path, case):
    paths = make_split(tmp_path)
    culprit = _corrupt(case, *paths)
    dataset = CocoPanopticDataset(*paths, skip_bad=True)
    with pytest.warns(UserWarning, match="skipping bad item"):
        sample = dataset[0]
    assert sample["image_id"] == 2  # the next good item, never a wrong label
    assert len(dataset.skipped) == 1 and dataset.skipped[0][0] == culprit
    problems = dataset.validate_all()
    assert [file for file, _ in problems] == [culprit]
    assert len(dataset) == 1 and dataset[0]["image_id"] == 2


def test_every_item_bad_raises(tmp_path):
    images_dir, json_path, panoptic_dir = make_split(tmp_path)
    for png in panoptic_dir.iterdir():
        png.unlink()
    dataset = CocoPanopticDataset(images_dir, json_path, panoptic_dir, skip_bad=True)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="every item is bad"):
        dataset[0]


def test_malformed_json_and_missing_directories(tmp_path):
    images_dir, json_path, panoptic_dir = make_split(tmp_path)
    json_path.write_text("{not json")
    with pytest.raises(ValueError, match=str(json_path)):
        CocoPanopticDataset(images_dir, json_path, panoptic_dir)
    json_path.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match="'annotations'"):
        CocoPanopticDataset(images_dir, json_path, panoptic_dir)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoPanopticDataset(tmp_path / "nowhere", json_path, panoptic_dir)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CocoPanopticDataset(images_dir, tmp_path / "missing.json", panoptic_dir)


def test_resolve_split_names_missing_paths(tmp_path):
    make_split(tmp_path, "val")
    paths = resolve_split(tmp_path, "val")
    assert paths.annotations_json == tmp_path / "annotations" / "panoptic_val.json"
    with pytest.raises(FileNotFoundError, match="panoptic_train.json"):
        resolve_split(tmp_path, "train")


def test_seeded_dataset_is_reproducible_per_epoch(tmp_path):
    paths = make_split(tmp_path)
    transform = TrainTransform(5, min_scale=0.5, max_scale=2.0)
    first = CocoPanopticDataset(*paths, transform=transform, seed=3)
    second = CocoPanopticDataset(*paths, transform=transform, seed=3)
    for index in range(2):
        for key in ("image", "panoptic", "masks"):
            assert torch.equal(first[index][key], second[index][key])
    epoch_zero = [first[i]["panoptic"] for i in range(2)]
    first.set_epoch(1)
    assert not all(torch.equal(a, first[i]["panoptic"]) for i, a in enumerate(epoch_zero))


def _parse(argv: list[str], split_flags=("--split",)) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_data_arguments(parser, split_flags=split_flags)
    return parser.parse_args(argv)


def test_data_arguments_both_forms(tmp_path):
    images_dir, json_path, panoptic_dir = make_split(tmp_path)
    by_root = dataset_from_args(_parse(["--data", str(tmp_path), "--split", "val"]))
    by_paths = dataset_from_args(_parse(["--images", str(images_dir), "--annotations",
                                         str(json_path), "--panoptic-dir", str(panoptic_dir)]))
    assert len(by_root) == len(by_paths) == 2
    assert by_root.annotations_json == by_paths.annotations_json
    assert dataset_from_args(_parse(["--data", str(tmp_path), "--split", "val", "--skip-bad"]
                                    )).skip_bad
    with pytest.raises(ValueError, match="--annotations, --panoptic-dir missing"):
        dataset_from_args(_parse(["--images", str(images_dir)]))
    with pytest.raises(ValueError, match="needs --data"):
        dataset_from_args(_parse(["--split", "val"]))
    with pytest.raises(ValueError, match="no dataset given"):
        dataset_from_args(_parse([]))
    with pytest.raises(ValueError, match="--data ROOT needs --split NAME"):
        dataset_from_args(_parse(["--data", str(tmp_path)]))


def test_data_arguments_custom_split_flags(tmp_path):
    make_split(tmp_path, "train")
    images_dir, json_path, panoptic_dir = make_split(tmp_path / "other", "val")
    args = _parse(["--data", str(tmp_path), "--train-split", "train",
                   "--val-images", str(images_dir), "--val-annotations", str(json_path),
                   "--val-panoptic-dir", str(panoptic_dir)],
                  split_flags=("--train-split", "--val-split"))
    train = dataset_from_args(args, "--train-split", transform=TrainTransform(4))
    val = dataset_from_args(args, "--val-split")
    assert train.annotations_json.name == "panoptic_train.json"
    assert train[0]["image"].shape == (3, 4, 4)
    assert val.annotations_json == json_path
    args = _parse(["--data", str(tmp_path), "--train-split", "train"],
                  split_flags=("--train-split", "--val-split"))
    assert dataset_from_args(args, "--val-split", required=False) is None


def test_cityscapes_root_is_detected(tmp_path):
    root = tmp_path / "cs"
    (root / "gtFine" / "cityscapes_panoptic_val").mkdir(parents=True)
    (root / "leftImg8bit" / "val").mkdir(parents=True)
    (root / "gtFine" / "cityscapes_panoptic_val.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": CATEGORIES}))
    dataset = dataset_from_args(_parse(["--data", str(root), "--split", "val"]))
    assert isinstance(dataset, CityscapesPanopticDataset)
    assert dataset.info.label_divisor == 1000


@pytest.fixture
def coco_sample():
    if not (SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"real COCO panoptic sample not found at {SAMPLE}")
    return CocoPanopticDataset(SAMPLE / "input_images", SAMPLE / "panoptic_examples.json",
                               SAMPLE / "panoptic_examples")


def test_real_coco_samples_follow_the_contract(coco_sample):
    from cmt_deeplab.data.panoptic_png import read_panoptic_png

    dataset = coco_sample
    assert len(dataset) == 2
    assert dataset.info.num_classes == 133 and dataset.info.num_thing_classes == 80
    data = json.loads((SAMPLE / "panoptic_examples.json").read_text())
    for index, (size, annotation) in enumerate(
            zip([(427, 640), (360, 640)], data["annotations"], strict=True)):
        sample = dataset[index]
        assert sample["image"].shape == (3, *size) and sample["orig_size"] == size
        assert float(sample["image"].min()) >= -1.0 and float(sample["image"].max()) <= 1.0
        ids = read_panoptic_png(SAMPLE / "panoptic_examples" / annotation["file_name"])
        segments = annotation["segments_info"]
        crowd = [s for s in segments if s["iscrowd"]]
        stuff_classes = {s["category_id"] for s in segments if s["category_id"] > 90}
        things = [s for s in segments if s["category_id"] <= 90 and not s["iscrowd"]]
        assert len(sample["labels"]) == len(things) + len(stuff_classes)
        masks = sample["masks"]
        # Masks are disjoint and cover exactly the non-void pixels.
        assert int(masks.sum(0).max()) == 1
        assert torch.equal(~masks.any(0), sample["void"])
        crowd_pixels = np.isin(ids, [s["id"] for s in crowd])
        np.testing.assert_array_equal(sample["void"].numpy(), (ids == 0) | crowd_pixels)
        # Each mask's area matches the JSON area of its segment (things) or class (stuff).
        areas = sorted(int(m.sum()) for m in masks)
        expected = sorted([s["area"] for s in things] + [
            sum(s["area"] for s in segments if s["category_id"] == c) for c in stuff_classes])
        assert areas == expected
        person = dataset.info.contiguous_id(1)
        assert int((sample["labels"] == person).sum()) == sum(
            1 for s in things if s["category_id"] == 1)
        semantic = sample["semantic"]
        for mask, label in zip(masks, sample["labels"], strict=True):
            assert bool((semantic[mask] == label).all())
        assert bool((semantic[torch.from_numpy(ids == 0)] == IGNORE_LABEL).all())
        panoptic = sample["panoptic"]
        assert bool((panoptic[sample["masks"][0]] // 256 == 1).all())  # first: a person
        assert int((panoptic == 0).sum()) == int((ids == 0).sum())


def test_data_error_is_a_value_error():
    error = DataError("x.png", "bad")
    assert isinstance(error, ValueError) and error.path == "x.png"
