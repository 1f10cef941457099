"""Synthetic dataset: deterministic, valid COCO panoptic, non-trivial (colour is not the class)."""

from __future__ import annotations

import importlib.util
import json
import time

import numpy as np
import pytest
from PIL import Image

from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.data.check import check_dataset
from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset
from cmt_deeplab.data.panoptic_png import read_panoptic_png
from cmt_deeplab.data.synthetic import generate_synthetic_dataset, synthetic_categories


@pytest.fixture
def cli(monkeypatch):
    """``cli_main.main`` with only the command modules that exist yet (``synth`` among them)."""
    present = [name for name in cli_main.COMMAND_MODULES
               if importlib.util.find_spec(f"cmt_deeplab.cli.{name}") is not None]
    assert "synth" in present
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", present)
    return cli_main.main


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    kwargs = dict(split="train", num_images=6, size=48, seed=3, crowd_prob=0.5)
    generate_synthetic_dataset(tmp_path / "a", **kwargs)
    generate_synthetic_dataset(tmp_path / "b", workers=2, **kwargs)
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 6 * 2 + 1
    assert first == second
    generate_synthetic_dataset(tmp_path / "c", **{**kwargs, "seed": 4})
    generate_synthetic_dataset(tmp_path / "d", **{**kwargs, "split": "val"})
    other_seed = _files(tmp_path / "c")
    assert all(other_seed[name] != data for name, data in first.items() if name.suffix == ".png"
               and "annotations" not in str(name))
    val_image = (tmp_path / "d" / "val" / "000000000001.png").read_bytes()
    assert val_image != first[next(n for n in first if str(n) == "train/000000000001.png")]


def test_layout_and_json_are_valid_coco_panoptic(tmp_path):
    paths = generate_synthetic_dataset(tmp_path, "train", num_images=8, size=64, seed=0,
                                       crowd_prob=1.0, image_format="jpg")
    assert paths.images_dir == tmp_path / "train"
    assert paths.annotations_json == tmp_path / "annotations" / "panoptic_train.json"
    assert sorted(p.name for p in paths.images_dir.iterdir())[0] == "000000000001.jpg"
    dataset = CocoPanopticDataset(*paths)
    assert [c.name for c in dataset.info.categories] == [
        "circle", "square", "triangle", "star", "stripes", "checker", "noise", "gradient"]
    assert [c.id for c in dataset.info.categories] == [1, 2, 3, 4, 11, 12, 13, 14]
    report = check_dataset(dataset)
    assert report.ok, report.problems
    assert report.num_images == 8
    assert sum(report.crowd_per_category.values()) >= 6  # crowd_prob 1 (few may be hidden)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (3, 64, 64)
        assert bool(sample["is_thing"].any()) and bool((~sample["is_thing"]).any())


def _touching_instances(ids: np.ndarray) -> bool:
    """Two different thing segments (category < 10) share a 4-neighbour border."""
    thing = (ids > 0) & (ids // 1000 < 10)
    vertical = thing[1:] & thing[:-1] & (ids[1:] != ids[:-1])
    horizontal = thing[:, 1:] & thing[:, :-1] & (ids[:, 1:] != ids[:, :-1])
    return bool(vertical.any() or horizontal.any())


def test_content_is_varied_and_colour_does_not_give_the_class(tmp_path):
    paths = generate_synthetic_dataset(tmp_path, "train", num_images=60, size=64, seed=1)
    data = json.loads(paths.annotations_json.read_text())
    thing_counts, touching, colours, classes = [], 0, [], []
    for annotation in data["annotations"]:
        ids = read_panoptic_png(paths.panoptic_dir / annotation["file_name"])
        image = np.asarray(Image.open(paths.images_dir / annotation["file_name"]))
        things = [s for s in annotation["segments_info"] if s["category_id"] < 10]
        thing_counts.append(len(things))
        touching += _touching_instances(ids)
        for segment in things:
            colours.append(image[ids == segment["id"]].mean(axis=0))
            classes.append(segment["category_id"])
    assert np.mean(thing_counts) >= 2.5 and max(thing_counts) >= 5
    assert touching >= 20  # shapes touch and occlude in a good share of the images
    assert set(classes) == {1, 2, 3, 4}
    # Nearest class-mean colour classifier: close to chance (0.25), far from perfect.
    colours, classes = np.array(colours), np.array(classes)
    means = {c: colours[classes == c].mean(axis=0) for c in set(classes.tolist())}
    predicted = [min(means, key=lambda c: np.linalg.norm(x - means[c])) for x in colours]
    accuracy = float(np.mean(np.array(predicted) == classes))
    assert accuracy < 0.45, accuracy


def test_category_subset_and_bad_arguments(tmp_path):
    paths = generate_synthetic_dataset(tmp_path, "val", num_images=4, size=32, seed=0,
                                       categories=["circle", "stripes"])
    data = json.loads(paths.annotations_json.read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "stripes"]
    used = {s["category_id"] for a in data["annotations"] for s in a["segments_info"]}
    assert used <= {1, 11} and 1 in used
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        synthetic_categories(["pentagon"])
    with pytest.raises(ValueError, match="at least one thing and one stuff"):
        synthetic_categories(["circle", "star"])
    with pytest.raises(ValueError, match="num_images"):
        generate_synthetic_dataset(tmp_path, num_images=0)


def test_more_classes_on_request_only(tmp_path):
    """The classes a fine-tuning task draws; the default set never shows them."""
    more = ["hexagon", "cross", "ring", "star", "dots", "waves", "checker"]
    assert [c.name for c in synthetic_categories()] == [
        "circle", "square", "triangle", "star", "stripes", "checker", "noise", "gradient"]
    assert [c.name for c in synthetic_categories(more)] == [
        "star", "hexagon", "cross", "ring", "checker", "dots", "waves"]  # id order
    paths = generate_synthetic_dataset(tmp_path, "train", num_images=12, size=48, seed=3,
                                       categories=more)
    data = json.loads(paths.annotations_json.read_text())
    used = {s["category_id"] for a in data["annotations"] for s in a["segments_info"]}
    assert used == {4, 5, 6, 7, 12, 15, 16}


def test_synth_command(tmp_path, cli, capsys):
    code = cli(["synth", "--out", str(tmp_path), "--split", "demo", "--num", "3", "--size",
                "32", "--seed", "2", "--crowd", "--workers", "1"])
    assert code == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert len(list((tmp_path / "annotations" / "panoptic_demo").iterdir())) == 3
    data = json.loads((tmp_path / "annotations" / "panoptic_demo.json").read_text())
    assert data["info"]["description"].endswith("seed 2, 32x32")
    assert cli(["synth", "--out", str(tmp_path), "--num", "0"]) == 2


@pytest.mark.slow
def test_two_thousand_images_well_under_a_minute(tmp_path):
    start = time.perf_counter()
    generate_synthetic_dataset(tmp_path, "train", num_images=2000, size=96, seed=0, workers=2)
    assert time.perf_counter() - start < 45
