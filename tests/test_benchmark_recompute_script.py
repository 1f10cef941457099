"""``benchmarks/recompute.py`` end to end on the tiny model (its numbers are for the large
models at 641x641; this keeps the script working)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "recompute.py"


def test_recompute_benchmark_runs_and_prints_every_mode():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "cmt-deeplab-tiny", "--crop", "49",
         "--batches", "2", "--rounds", "1", "--steps", "1", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| cmt-deeplab-tiny")]
    assert [row.split("|")[3].strip() for row in rows] == ["none", "axial", "blocks"]
    assert rows[0].split("|")[7].strip() == "0%" and rows[0].split("|")[8].strip() == "1.00x"
