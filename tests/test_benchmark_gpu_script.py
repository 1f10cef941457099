"""``benchmarks/gpu.py`` only runs for real where a GPU is lent: its CPU smoke mode keeps the
script working in between (model build, folded fp32/bf16 forwards, the training step)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_smoke_run_on_cpu() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--models", "cmt-deeplab-tiny",
         "--height", "65", "--width", "97", "--repeats", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "smoke run: not GPU numbers" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| cmt-deeplab-tiny"))
    fp32_fps, bf16_fps = (float(cell) for cell in row.split("|")[2:4])
    assert fp32_fps > 0 and bf16_fps > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_benchmark_refuses_cuda_without_a_gpu() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "needs a CUDA device" in result.stderr
