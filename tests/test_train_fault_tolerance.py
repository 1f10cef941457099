"""``torchrun --max-restarts``: one of two workers is SIGKILLed mid-run, torchrun restarts the
group, every rank resumes from the newest complete training state on its own (no --resume), and
the final weights equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from _torchrun import (
    assert_same_weights,
    children,
    elastic_torchrun,
    env,
    run,
    train_args,
    weights,
    worker_rank,
)
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.training_state import list_checkpoints

STEPS = 8
SETTINGS = ("--batch-size", "4", "--steps", str(STEPS), "--save-every", "2", "--set",
            "model.overrides.drop_path_keep_prob=0.7")


def _kill_rank(agent: subprocess.Popen, rank: int) -> int:
    """SIGKILLs the agent's worker of ``rank``; returns its pid."""
    for pid in children(agent.pid):
        if worker_rank(pid) == rank:
            os.kill(pid, signal.SIGKILL)
            return pid
    raise AssertionError(f"no worker of rank {rank} under torchrun pid {agent.pid}")


@pytest.mark.slow
def test_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(tmp_path):
    data = tmp_path / "data"
    # 10 images, 4 a step: the run crosses epoch boundaries (2 steps an epoch).
    generate_synthetic_dataset(data, "train", num_images=10, size=40, seed=5)
    reference, restarted = tmp_path / "reference", tmp_path / "restarted"
    result = run(elastic_torchrun(train_args(data, reference, *SETTINGS), 2))
    assert result.returncode == 0, result.stderr[-3000:]

    agent = subprocess.Popen(
        elastic_torchrun(train_args(data, restarted, *SETTINGS), 2, "--max-restarts", "1",
                         "--monitor-interval", "0.1"),
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        marker = restarted / "checkpoints" / "step_0000002" / "COMPLETE"
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert agent.poll() is None, agent.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no step-2 training state within 600 s"
            time.sleep(0.01)
        _kill_rank(agent, 1)
        output, _ = agent.communicate(timeout=900)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, output[-3000:]
    assert "resumed from" in output, "the workers were not restarted"
    assert [step for step, _ in list_checkpoints(restarted)][-1] == STEPS
    assert_same_weights(weights(restarted), weights(reference))


def test_a_restarted_worker_resumes_without_the_resume_flag(tmp_path):
    """What a worker restarted by torchrun sees (``TORCHELASTIC_RESTART_COUNT`` > 0): it goes
    on from the newest training state, where a fresh start would refuse the used --out."""
    generate_synthetic_dataset(tmp_path / "data", "train", num_images=4, size=40, seed=5)
    out = tmp_path / "run"

    def train(restarts: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "cmt_deeplab.cli.main",
                   *train_args(tmp_path / "data", out, "--batch-size", "2", "--steps", "2",
                               "--save-every", "1", "--time-limit", "0.001")]
        return subprocess.run(command, env={**env(), "TORCHELASTIC_RESTART_COUNT": restarts},
                              capture_output=True, text=True, timeout=600)

    first = train("0")  # stops after one step (time limit) with a training state
    assert first.returncode == 0, first.stderr[-3000:]
    assert [step for step, _ in list_checkpoints(out)] == [1]
    again = train("0")
    assert again.returncode != 0 and "already holds training states" in again.stderr
    restarted = train("1")
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "resumed from" in restarted.stdout + restarted.stderr
    assert [step for step, _ in list_checkpoints(out)][-1] == 2


def test_each_restart_attempt_keys_its_process_group_apart(monkeypatch):
    """torchrun shares one store across restart attempts: what attempt 0 wrote (a dead rank's
    address) must not be what attempt 1 reads."""
    import torch.distributed as dist

    from _torchrun import free_port
    from cmt_deeplab.engine.distributed import _attempt_store

    port = free_port()
    shared = dist.TCPStore("127.0.0.1", port, 1, is_master=True)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    _attempt_store(2, 0).set("rank_0", "address of attempt 0")
    second = _attempt_store(2, 1)
    assert not second.check(["rank_0"])
    second.set("rank_0", "address of attempt 1")
    assert _attempt_store(2, 1).get("rank_0") == b"address of attempt 1"
    assert shared.get("cmt_deeplab/attempt_0/rank_0") == b"address of attempt 0"

    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # no restarts: env:// as usual
    assert _attempt_store(2, 0) is None
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # several nodes: restart counts differ
    monkeypatch.setenv("RANK", "0")
    with pytest.warns(UserWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        assert _attempt_store(2, 0) is None
