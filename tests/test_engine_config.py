"""Training config: shipped files, --set overrides, precedence, unknown keys, types."""

from __future__ import annotations

import pytest

import cmt_deeplab
from cmt_deeplab.engine.config import (
    TrainConfig,
    list_shipped_configs,
    load_train_config,
    parse_override,
    resolve_config_path,
)

PAPER_CONFIGS = [
    "coco_cmt_deeplab_s", "coco_cmt_deeplab_l", "coco_cmt_deeplab_l_rfn", "coco_max_deeplab_s",
    "cityscapes_cmt_deeplab_s", "cityscapes_max_deeplab_s", "synthetic_cmt_deeplab_tiny",
]


def test_every_shipped_config_loads_and_names_a_registered_model():
    assert sorted(PAPER_CONFIGS) == list_shipped_configs()
    for name in PAPER_CONFIGS:
        config = load_train_config(name)
        assert config.model.name in cmt_deeplab.list_models(), name


def test_paper_values():
    cityscapes = load_train_config("cityscapes_cmt_deeplab_s")
    assert cityscapes.run.steps == 60_000
    assert cityscapes.optimizer.lr == pytest.approx(3e-4)
    assert cityscapes.input.crop == [1025, 2049]
    assert cityscapes.augmentation.resize_to_crop is False
    assert cityscapes.loss.semantic_topk == pytest.approx(0.2)
    max_s = load_train_config("coco_max_deeplab_s")
    assert (max_s.optimizer.name, max_s.optimizer.lr, max_s.optimizer.weight_decay) == (
        "adam", 1e-3, 0.0)
    assert max_s.loss.instance_sample_k == 0 and max_s.loss.mask_approx_weight == 0
    assert (max_s.schedule.warmup_steps, max_s.schedule.power) == (5000, 0.9)
    assert (max_s.run.steps, max_s.run.batch_size, max_s.input.crop) == (200_000, 64, [1025, 1025])
    tiny = load_train_config("synthetic_cmt_deeplab_tiny")
    assert tiny.run.steps * tiny.run.batch_size <= 13_500


def test_overrides_are_parsed_as_yaml_and_take_precedence():
    assert parse_override("optimizer.lr=3e-4") == ("optimizer.lr", 3e-4)  # YAML 1.1: a string
    assert parse_override("run.device=cuda:1") == ("run.device", "cuda:1")
    assert parse_override("input.crop=[65, 129]") == ("input.crop", [65, 129])
    assert parse_override("data.val_split=null") == ("data.val_split", None)
    config = load_train_config(
        "coco_cmt_deeplab_s",
        ["optimizer.lr=3e-4", "run.steps=10", "run.steps=20", "loss.semantic_weight=0",
         "augmentation.resize_to_crop=false", "input.crop=65", "model.overrides.use_pixel_update=false"],
        {"run.steps": 7},  # command-line flags win over --set
    )
    assert config.optimizer.lr == pytest.approx(3e-4) and isinstance(config.optimizer.lr, float)
    assert config.run.steps == 7
    assert config.loss.semantic_weight == 0.0
    assert config.augmentation.resize_to_crop is False
    assert config.input.crop == [65, 65]
    assert config.model.overrides == {"drop_path_keep_prob": 0.8, "drop_path_schedule": "linear",
                                      "use_pixel_update": False}
    assert config.run.batch_size == 64  # untouched values stay the file's


@pytest.mark.parametrize("override, message", [
    ("optimizer.lrr=1", "unknown config key 'optimizer.lrr'"),
    ("loss.focal=1", "unknown config key 'loss.focal'"),
    ("trainer.steps=1", "unknown config key 'trainer'"),
    ("run.steps=abc", "'run.steps' must be an integer"),
    ("run.amp=fp8", "run.amp must be one of"),
    ("augmentation.flip_prob=yes please", "'augmentation.flip_prob' must be a number"),
    ("loss.alpha=2", "alpha must lie in"),
    ("run.steps.x=1", "'run.steps' must be an integer"),
    ("nothing", "expects key.sub=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_train_config(None, [override])


def test_unknown_key_in_a_file_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  steps: 5\n  stepz: 6\n")
    with pytest.raises(ValueError, match="unknown config key 'run.stepz'"):
        load_train_config(path)
    with pytest.raises(ValueError, match="run.steps is a value"):
        load_train_config(path, ["run.steps.x=1"])
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_train_config(path)


def test_config_path_or_shipped_name(tmp_path):
    assert resolve_config_path("coco_cmt_deeplab_s").name == "coco_cmt_deeplab_s.yaml"
    assert resolve_config_path("coco_cmt_deeplab_s.yaml").name == "coco_cmt_deeplab_s.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("run: {steps: 3}\n")
    assert load_train_config(str(own)).run.steps == 3
    with pytest.raises(FileNotFoundError, match="shipped: .*coco_cmt_deeplab_s"):
        resolve_config_path("coco_cmt_deeplab_xl")


def test_round_trip_through_a_dict():
    config = load_train_config("cityscapes_cmt_deeplab_s", ["run.steps=12"])
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    assert TrainConfig.from_dict(None) == TrainConfig()
