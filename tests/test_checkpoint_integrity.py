"""Checkpoints that prove they are intact: weight digests, pruning that a kill cannot leave
half-done, config.yaml errors that name the file, absurd sizes refused before allocation."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import cmt_deeplab
from cmt_deeplab.data.synthetic import synthetic_dataset_info
from cmt_deeplab.engine import training_state
from cmt_deeplab.engine.training_state import (
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    save_training_state,
)
from cmt_deeplab.model_dir import DIGEST_KEY, load_model_dir, save_model_dir
from cmt_deeplab.models import ModelSpec, attach_model_spec
from cmt_deeplab.utils.process_memory import peak_rss_bytes

INFO = synthetic_dataset_info()


class _Small(torch.nn.Module):
    """A few layers: what the checkpoint code stores, in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        attach_model_spec(self, ModelSpec("small", {"width": 4}))
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=INFO.num_classes,
                                    num_thing_classes=INFO.num_thing_classes, num_slots=8)
    return save_model_dir(tmp_path_factory.mktemp("tiny") / "m", model, {"data": INFO})


def _copy(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / "copy"))


def test_digest_is_written_and_a_flipped_tensor_byte_is_refused(tiny_dir, tmp_path):
    directory = _copy(tiny_dir, tmp_path)
    weights = directory / "model.safetensors"
    config = yaml.safe_load((directory / "config.yaml").read_text())
    assert config[DIGEST_KEY] == hashlib.sha256(weights.read_bytes()).hexdigest()
    load_model_dir(directory)  # intact: loads
    data = bytearray(weights.read_bytes())
    # Overwrite tensor bytes (past the header) with NaNs: a valid safetensors file still.
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 100:header + 108] = b"\xff" * 8
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt or truncated weights file .*model.safetensors: "
                                         r"its SHA-256 is [0-9a-f]{64}, not " + config[DIGEST_KEY]):
        load_model_dir(directory)


def test_directories_without_a_digest_still_load(tiny_dir, tmp_path):
    directory = _copy(tiny_dir, tmp_path)
    config = yaml.safe_load((directory / "config.yaml").read_text())
    del config[DIGEST_KEY]
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    load_model_dir(directory)
    config[DIGEST_KEY] = "abc"
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"config.yaml: weights_sha256 is not a SHA-256"):
        load_model_dir(directory)


def test_training_state_tensors_are_checked(tmp_path):
    model = _Small()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 6, 6)).sum().backward()
    optimizer.step()
    step_dir = save_training_state(tmp_path, 1, model, optimizer, {}, {"data": INFO})
    skeleton = json.loads((step_dir / "state.json").read_text())
    tensors = step_dir / "state.safetensors"
    assert skeleton["tensors_sha256"] == hashlib.sha256(tensors.read_bytes()).hexdigest()
    data = bytearray(tensors.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # the last float32 of a moment becomes NaN
    tensors.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt or truncated weights file .*state.safetensors"):
        load_training_state(step_dir, _Small(), torch.optim.AdamW(_Small().parameters()))


class _Interrupted(BaseException):
    """Stands for a kill: nothing after it runs."""


def test_an_interrupt_while_pruning_leaves_no_listed_half_state(tmp_path, monkeypatch):
    model = _Small()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_state(tmp_path, 1, model, optimizer, {}, {"data": INFO}, keep_last=1)
    removed = []

    def rmtree_then_stop(path, ignore_errors=False):
        # The order in which a real rmtree deleted files before: state.json first is the
        # worst case (COMPLETE stays, the state is gone).
        path = Path(path)
        (path / "state.json").unlink()
        removed.append(path)
        raise _Interrupted

    monkeypatch.setattr(training_state.shutil, "rmtree", rmtree_then_stop)
    with pytest.raises(_Interrupted):
        save_training_state(tmp_path, 2, model, optimizer, {}, {"data": INFO}, keep_last=1)
    # The folder was out of sight before its first file went.
    assert removed and removed[0].name.startswith(".tmp-pruned-step_0000001")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2]
    assert load_training_state(latest_checkpoint(tmp_path), _Small())["step"] == 2
    monkeypatch.undo()
    save_training_state(tmp_path, 3, model, optimizer, {}, {"data": INFO}, keep_last=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000003"]


_KILL_WHILE_PRUNING = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    import torch
    from cmt_deeplab.data.synthetic import synthetic_dataset_info
    from cmt_deeplab.engine import training_state
    from cmt_deeplab.models import ModelSpec, attach_model_spec

    model = torch.nn.Linear(2, 2)
    attach_model_spec(model, ModelSpec("small", {}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out, info = Path(sys.argv[1]), synthetic_dataset_info()
    training_state.save_training_state(out, 1, model, optimizer, {}, {"data": info})
    real_rmtree = shutil.rmtree

    def rmtree_killed(path, ignore_errors=False):
        if Path(path).name.startswith(".tmp-pruned-"):
            (Path(path) / "state.json").unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        real_rmtree(path, ignore_errors=ignore_errors)

    training_state.shutil.rmtree = rmtree_killed
    training_state.save_training_state(out, 2, model, optimizer, {}, {"data": info}, keep_last=1)
""")


def test_sigkill_while_pruning(tmp_path):
    result = subprocess.run([sys.executable, "-c", _KILL_WHILE_PRUNING, str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[0].startswith(".tmp-pruned-step_0000001") and names[1:] == ["step_0000002"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2]
    assert not (tmp_path / "checkpoints" / names[0] / "state.json").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("data"), r"lacks its 'data' section"),
    (lambda c: c["data"]["categories"][0].pop("id"),
     r"bad 'data' section: malformed category record .*'id'"),
    (lambda c: c["data"]["categories"].append("car"),
     r"bad 'data' section: malformed category record 'car'"),
    (lambda c: c["data"].__setitem__("categories", 7), r"categories must be a list, got 7"),
    (lambda c: c.__setitem__("input", {"eval_size": "big"}), r"input.eval_size: bad size 'big'"),
    (lambda c: c.__setitem__("input", {"crop": [10**6, 10**6]}), r"input.crop: bad size"),
    (lambda c: c.__setitem__("input", [1, 2]), r"'input' is not a mapping"),
    (lambda c: c["model"]["build_kwargs"].__setitem__("num_slots", "many"),
     r"cannot build the model"),
    (lambda c: c["model"]["build_kwargs"].__setitem__("num_slots", -3),
     r"cannot build the model"),
    (lambda c: c["model"].__setitem__("name", "cmt-deeplab-xxl"), r"cannot build the model"),
])
def test_config_errors_name_the_file(tiny_dir, tmp_path, edit, message):
    directory = _copy(tiny_dir, tmp_path)
    config = yaml.safe_load((directory / "config.yaml").read_text())
    edit(config)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r".*config.yaml.*" + message):
        load_model_dir(directory)


@pytest.mark.parametrize("key, value, message", [
    ("num_classes", 10**9, r"config.yaml: model.build_kwargs.num_classes is 1000000000"),
    ("num_slots", 10**7, r"model.safetensors do not fit .*shape mismatch"),
    ("num_slots", 1e7, r"config.yaml: cannot build the model"),  # a float count
])
def test_absurd_sizes_are_refused_before_allocation(tiny_dir, tmp_path, key, value, message):
    directory = _copy(tiny_dir, tmp_path)
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config["model"]["build_kwargs"][key] = value
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    before = peak_rss_bytes()
    with pytest.raises(ValueError, match=message):
        load_model_dir(directory)
    # 10^7 slots x 128 channels alone would be 5 GB: nothing of that size was allocated.
    assert peak_rss_bytes() - before < 1 << 30
