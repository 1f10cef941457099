"""``benchmarks/export_speed.py`` end to end on the tiny model (its numbers are for CMT-S and
MaX-S at 641x641; this keeps the script working). One ONNX export: ``slow``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from _export_helpers import require_onnxruntime

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "export_speed.py"


@pytest.mark.slow
def test_export_speed_benchmark_prints_every_path_with_parity():
    require_onnxruntime()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "cmt-deeplab-tiny", "--size", "65",
         "--rounds", "1", "--threads", "1", "--int8", "--profile"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rows = {line[:22].strip(): line[22:].split() for line in lines
            if line.startswith(("eager", "onnxruntime"))}
    assert list(rows) == ["eager fp32", "eager bf16 autocast", "onnxruntime fp32",
                          "onnxruntime int8"]
    assert any(line.strip().startswith("onnxruntime, ms a forward") for line in lines)
    assert any(line.strip().startswith("PyTorch eager fp32, ms a forward") for line in lines)
    assert rows["eager fp32"][2] == "1.00x"
    # onnxruntime against eager: logits equal within float rounding, the same maps.
    assert float(rows["onnxruntime fp32"][3]) < 1e-3 and float(rows["onnxruntime fp32"][4]) < 1e-3
    assert float(rows["onnxruntime fp32"][6].rstrip("%")) >= 99.9
