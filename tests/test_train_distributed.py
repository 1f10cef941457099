"""Two CPU processes (gloo) under ``torch.distributed.run`` (~20 s): DDP training, rank-0-only
writes, per-rank RNG states in the checkpoint, and a resume under the same world size."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.training_state import list_checkpoints, load_training_state
from cmt_deeplab.model_dir import load_model_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(data_root, out, steps, *extra):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "cmt_deeplab.cli.main", "train", "--model", "cmt-deeplab-tiny",
        "--data", str(data_root), "--train-split", "train", "--val-split", "val",
        "--crop", "33", "--batch-size", "4", "--steps", str(steps), "--save-every", "2",
        "--eval-every", "4", "--num-workers", "0", "--out", str(out), "--no-progress",
        "--set", "model.num_slots=8", *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_gloo_run_and_resume(tmp_path):
    generate_synthetic_dataset(tmp_path / "data", "train", num_images=8, size=40, seed=5)
    generate_synthetic_dataset(tmp_path / "data", "val", num_images=2, size=40, seed=5)
    out = tmp_path / "run"
    result = _torchrun(tmp_path / "data", out, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 2 steps") == 1  # rank 0 reports, rank 1 stays quiet

    _, path = list_checkpoints(out)[-1]
    model, config = load_model_dir(path)
    state = load_training_state(path, model)["state"]
    assert state["world_size"] == 2
    assert len(state["rng"]) == 2  # one set of RNG states per rank
    # Each rank draws its own drop-path / sampling streams.
    assert not bool((state["rng"][0]["global"]["torch"] == state["rng"][1]["global"]["torch"])
                    .all())

    result = _torchrun(tmp_path / "data", out, 4, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    assert [step for step, _ in list_checkpoints(out)][-1] == 4
    assert (out / "eval.json").is_file()
    load_model_dir(out)
