"""Model directories and training states: bit-identical round trips, clear errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml

import cmt_deeplab
from cmt_deeplab.data.synthetic import synthetic_dataset_info
from cmt_deeplab.engine.rng_state import capture_rng_state, restore_rng_state
from cmt_deeplab.engine.training_state import (
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    save_training_state,
)
from cmt_deeplab.model_dir import load_model_dir, save_model_dir
from cmt_deeplab.models import ModelSpec, attach_model_spec

INFO = synthetic_dataset_info()


def _tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=INFO.num_classes,
                                   num_thing_classes=INFO.num_thing_classes, num_slots=8)


@pytest.fixture(scope="module")
def trained_model() -> torch.nn.Module:
    """A tiny model whose BN statistics moved away from their initial values."""
    model = _tiny_model()
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 33, 33))
    return model


def test_model_dir_round_trip_is_bit_identical(tmp_path, trained_model):
    save_model_dir(tmp_path / "m", trained_model, {"data": INFO, "input": {"crop": (33, 33)}})
    config = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert config["model"] == {"name": "cmt-deeplab-tiny", "build_kwargs": {
        "num_classes": 8, "num_thing_classes": 4, "num_slots": 8}}
    assert config["input"] == {"crop": [33, 33]}
    assert [c["name"] for c in config["data"]["categories"]][:2] == ["circle", "square"]

    loaded, loaded_config = load_model_dir(tmp_path / "m")
    assert not loaded.training
    assert loaded_config == config
    expected = trained_model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert any("running_mean" in key for key in got)  # buffers travel too
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    images = torch.randn(1, 3, 33, 33)
    trained_model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images)["pred_masks"], trained_model(images)["pred_masks"])


def test_missing_and_corrupt_files_name_the_file(tmp_path, trained_model):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model_dir(tmp_path / "nowhere")
    directory = save_model_dir(tmp_path / "m", trained_model, {"data": INFO})
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated weights file .*model.safetensors"):
        load_model_dir(directory)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model_dir(directory)
    (directory / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ValueError, match="config.yaml is not valid YAML"):
        load_model_dir(directory)


def test_mismatched_weights_are_listed(tmp_path, trained_model):
    directory = save_model_dir(tmp_path / "m", trained_model, {"data": INFO})
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config["model"]["build_kwargs"]["num_slots"] = 16  # slot table shapes differ
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"do not fit CMTDeepLab: .*shape mismatch"):
        load_model_dir(directory)
    # A class count other than the categories' is refused by name, before any build.
    config["model"]["build_kwargs"]["num_classes"] = 9
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"config.yaml: model.build_kwargs.num_classes is 9 "
                                         r"but the 'data' section lists 8"):
        load_model_dir(directory)


def test_save_model_dir_needs_categories(tmp_path, trained_model):
    with pytest.raises(ValueError, match="needs 'data'"):
        save_model_dir(tmp_path / "m", trained_model, {"input": {}})
    with pytest.raises(ValueError, match="build_model"):
        save_model_dir(tmp_path / "m", torch.nn.Linear(2, 2), {"data": INFO})


class _Small(torch.nn.Module):
    """A few layers with BN buffers: what the training-state code stores, in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        attach_model_spec(self, ModelSpec("small", {"width": 4}))
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


def test_training_state_round_trip_and_retention(tmp_path):
    torch.manual_seed(0)
    model = _Small()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        optimizer.step()
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    generator = torch.Generator().manual_seed(11)
    torch.rand(3, generator=generator)
    extra = {"epoch": 2, "sampler_position": 5, "rng": capture_rng_state(),
             "generators": {"loss": generator.get_state()}, "scheduler": {"last_epoch": 2}}
    for step in (10, 20, 30):
        save_training_state(tmp_path, step, model, optimizer, extra, {"data": INFO}, keep_last=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [20, 30]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_0000030"
    assert sorted(p.name for p in latest.iterdir()) == [
        "COMPLETE", "config.yaml", "model.safetensors", "state.json", "state.safetensors"]
    expected_python, expected_numpy, expected_torch = (
        random.random(), np.random.random(), torch.rand(1))

    torch.manual_seed(2)
    fresh = _Small()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=5.0)
    loaded = load_training_state(latest, fresh, fresh_optimizer)
    assert loaded["step"] == 30
    state = loaded["state"]
    assert state["epoch"] == 2 and state["sampler_position"] == 5
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    original, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]  # lr 1e-3, betas tuple
    for index, slots in original["state"].items():
        for name, value in slots.items():
            assert torch.equal(restored["state"][index][name], value), (index, name)
    restore_rng_state(state["rng"])
    assert (random.random(), np.random.random()) == (expected_python, expected_numpy)
    assert torch.equal(torch.rand(1), expected_torch)
    other = torch.Generator()
    other.set_state(state["generators"]["loss"])
    assert torch.equal(torch.rand(3, generator=other), torch.rand(3, generator=generator))


def test_incomplete_states_are_ignored(tmp_path):
    model = _Small()
    optimizer = torch.optim.AdamW(model.parameters())
    save_training_state(tmp_path, 4, model, optimizer, {}, {"data": INFO})
    root = tmp_path / "checkpoints"
    # A run killed mid-save leaves a temporary dir, or a step dir without COMPLETE.
    (root / ".tmp-step_0000008-123").mkdir()
    (root / "step_0000012").mkdir()
    (root / "step_0000012" / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step_0000004"
    with pytest.raises(ValueError, match="incomplete"):
        load_training_state(root / "step_0000012", model, optimizer)
    save_training_state(tmp_path, 5, model, optimizer, {}, {"data": INFO})
    assert not (root / ".tmp-step_0000008-123").exists()
    (latest_checkpoint(tmp_path) / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt training state file .*state.json"):
        load_training_state(latest_checkpoint(tmp_path), model, optimizer)
    assert json.loads((root / "step_0000004" / "state.json").read_text())["step"] == 4
