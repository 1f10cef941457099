"""``run.fit_time_limit``: the schedule shrinks to the time limit instead of being cut off."""

from __future__ import annotations

import types

import pytest

import cmt_deeplab.engine.time_budget as time_budget
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.config import load_train_config
from cmt_deeplab.engine.trainer import Trainer


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, "train", num_images=4, size=40, seed=2)
    return root


def _run(data_root, out, monkeypatch, fit: bool):
    """A 10,000-step plan with a 100 s limit on a fake clock: every step takes 1 s."""
    clock = [0.0]
    monkeypatch.setattr(time_budget, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(time_budget, "REPLAN_EVERY", 5)
    config = load_train_config(None, [
        "model.name=cmt-deeplab-tiny", "model.num_slots=8", f"data.root={data_root}",
        "data.train_split=train", "input.crop=33", "run.batch_size=2", "run.steps=10000",
        "run.save_every=0", "run.num_workers=0", "run.log_every=0", "schedule.warmup_steps=0",
        "run.time_limit_s=100", f"run.fit_time_limit={str(fit).lower()}",
    ])
    trainer = Trainer(config, out, progress=False)
    step = trainer.train_step

    def timed_step(*args, **kwargs):
        clock[0] += 1.0
        return step(*args, **kwargs)

    trainer.train_step = timed_step
    return trainer, trainer.train()


def test_fit_time_limit_ends_the_schedule_with_the_time(data_root, tmp_path, monkeypatch):
    trainer, summary = _run(data_root, tmp_path / "fit", monkeypatch, fit=True)
    # 1 s/step, 95% of 100 s planned: the run completes its (shortened) schedule at step 95.
    assert summary["steps"] == summary["planned_steps"] == 95
    assert trainer.optimizer.param_groups[0]["lr"] == 0.0
    assert (tmp_path / "fit" / "model.safetensors").exists()


def test_without_fit_the_time_limit_cuts_the_run(data_root, tmp_path, monkeypatch):
    trainer, summary = _run(data_root, tmp_path / "cut", monkeypatch, fit=False)
    assert summary["steps"] == 100 and summary["planned_steps"] == 10000
    assert trainer.optimizer.param_groups[0]["lr"] > 0.9 * trainer.config.optimizer.lr
