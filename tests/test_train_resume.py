"""Exact resume: a run SIGKILLed after its step-N state and resumed to 2N ends with weights
bit-identical to an uninterrupted 2N run (CPU, cmt-deeplab-tiny, tiny synthetic set)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.training_state import list_checkpoints, load_training_state
from cmt_deeplab.model_dir import read_safetensors

N = 4


def _command(data_root, out, *extra):
    return [
        sys.executable, "-m", "cmt_deeplab.cli.main", "train",
        "--model", "cmt-deeplab-tiny", "--data", str(data_root), "--train-split", "train",
        "--crop", "33", "--batch-size", "2", "--steps", str(2 * N), "--save-every", str(N),
        "--num-workers", "0", "--seed", "3", "--out", str(out), "--no-progress",
        "--set", "model.num_slots=8", "--set", "schedule.warmup_steps=2",
        "--set", "model.overrides.drop_path_keep_prob=0.7",  # drop path: global RNG in use
        *extra,
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    # 10 images / batch 2 = 5 batches an epoch: the 2N = 8 steps cross an epoch boundary.
    generate_synthetic_dataset(tmp_path / "data", "train", num_images=10, size=40, seed=1)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    subprocess.run(_command(tmp_path / "data", reference), env=_env(), check=True,
                   capture_output=True, timeout=300)

    # The interrupted run loads data in a worker process: the order must not depend on it.
    process = subprocess.Popen(_command(tmp_path / "data", interrupted, "--num-workers", "1"),
                               env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = interrupted / "checkpoints" / f"step_{N:07d}" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no step-N checkpoint within 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (interrupted / "model.safetensors").exists(), "the run finished before the kill"
    assert [step for step, _ in list_checkpoints(interrupted)][-1] < 2 * N

    resumed = subprocess.run(_command(tmp_path / "data", interrupted, "--resume"), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    expected = read_safetensors(reference / "model.safetensors")
    got = read_safetensors(interrupted / "model.safetensors")
    assert set(got) == set(expected)
    different = [key for key in expected if not bool((got[key] == expected[key]).all())]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # The optimizer moments too, through the final training states.
    import torch

    import cmt_deeplab

    states = []
    for run in (reference, interrupted):
        model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=8, num_thing_classes=4,
                                        num_slots=8)
        step, path = list_checkpoints(run)[-1]
        assert step == 2 * N
        load_training_state(path, model, None)
        states.append(read_safetensors(path / "state.safetensors"))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_resume_needs_the_flag_when_states_exist(tmp_path):
    generate_synthetic_dataset(tmp_path / "data", "train", num_images=4, size=40, seed=1)
    out = tmp_path / "run"
    (out / "checkpoints" / "step_0000002").mkdir(parents=True)
    (out / "checkpoints" / "step_0000002" / "COMPLETE").write_text("2\n")
    result = subprocess.run(_command(tmp_path / "data", out), env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert "already holds training states; pass --resume" in result.stderr


def test_a_longer_resumed_run_follows_the_new_schedule(tmp_path):
    """Resuming with more steps stretches the poly decay (the lr must not stay at 0)."""
    import pytest

    from cmt_deeplab.engine.config import load_train_config
    from cmt_deeplab.engine.optim import poly_lr_factor
    from cmt_deeplab.engine.trainer import Trainer

    generate_synthetic_dataset(tmp_path / "data", "train", num_images=4, size=40, seed=1)

    def trainer(steps, lr):
        config = load_train_config(None, [
            "model.name=cmt-deeplab-tiny", "model.num_slots=8", f"data.root={tmp_path / 'data'}",
            "data.train_split=train", "input.crop=33", "run.batch_size=2", f"run.steps={steps}",
            "run.num_workers=0", "schedule.warmup_steps=0", f"optimizer.lr={lr}",
        ])
        return Trainer(config, tmp_path / "run", resume=True, progress=False)

    trainer(2, 1e-3).train()
    longer = trainer(4, 2e-3)
    with pytest.warns(UserWarning, match="changed settings: optimizer.lr, run.steps"):
        longer.resume_latest()
    assert longer.step == 2
    for group in longer.optimizer.param_groups:
        scale = 0.1 if group["name"].startswith("pretrained") else 1.0  # none: from scratch
        assert group["lr"] == pytest.approx(2e-3 * scale * poly_lr_factor(2, 4, 0, 0.9))
    assert longer.scheduler.get_last_lr() == [g["lr"] for g in longer.optimizer.param_groups]
