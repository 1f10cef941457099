"""Launching ``cmt-deeplab train`` under ``torch.distributed.run`` (torchrun) from tests: one
node or several agents on this machine acting as nodes, all on CPU with gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from cmt_deeplab.model_dir import read_safetensors

#: Runs ``cmt-deeplab`` with BatchNorm on its running statistics and no dropout (see the file).
BATCH_INDEPENDENT_MAIN = str(Path(__file__).with_name("_batch_independent_main.py"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    """``train`` arguments of the tiny model on a synthetic set; ``extra`` may override."""
    return [
        "train", "--model", "cmt-deeplab-tiny", "--data", str(data_root),
        "--train-split", "train", "--crop", "33", "--num-workers", "0", "--seed", "3",
        "--out", str(out), "--no-progress", "--set", "model.num_slots=8", *extra,
    ]


def torchrun(
    args: list[str], nproc: int = 2, *launcher: str, main: str | None = None
) -> list[str]:
    """A single-node ``torchrun`` command line (``launcher``: more torchrun flags)."""
    target = [main] if main else ["-m", "cmt_deeplab.cli.main"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *launcher,
            *target, *args]


def elastic_torchrun(
    args: list[str], nproc: int = 2, *launcher: str, nnodes: int = 1,
    node_rank: int | None = None, port: int | None = None,
) -> list[str]:
    """A ``torchrun`` command line with the c10d rendezvous on localhost (the fault-tolerant,
    multi-node launch): every agent of a job gets the same ``port``."""
    rank = [] if node_rank is None else ["--node_rank", str(node_rank)]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), *rank,
            "--nproc_per_node", str(nproc), "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port or free_port()}", "--rdzv_id", "test",
            *launcher, "-m", "cmt_deeplab.cli.main", *args]


def run(command: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env(), capture_output=True, text=True, timeout=timeout)


def run_nodes(commands: list[list[str]], timeout: float = 900) -> list[tuple[int, str]]:
    """Starts one agent per command at once (the "nodes"); ``[(returncode, output)]``."""
    processes = [subprocess.Popen(c, env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for c in commands]
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux ``/proc``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # ``pid (comm) state ppid ...``; comm may hold spaces, hence the last parenthesis.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def worker_rank(pid: int) -> int | None:
    """The ``RANK`` of a torchrun worker process, from its environment."""
    try:
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(run_dir / "model.safetensors")


def assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(got[key], expected[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_close_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                         rtol: float, atol: float) -> None:
    """``|a - b| <= atol + rtol |b|`` elementwise for every floating-point tensor; the message
    names the tensor that misses it by most."""
    assert got.keys() == expected.keys()
    worst, name = 0.0, None
    for key, value in expected.items():
        if value.is_floating_point():
            excess = float(((got[key] - value).abs() / (atol + rtol * value.abs())).max())
            if excess > worst:
                worst, name = excess, key
    assert worst <= 1.0, f"{name} differs by {worst:.3g}x the tolerance"
