"""The README's "After `make demo`" commands, in order, as a newcomer runs them: a fresh
virtual environment installed as ``make venv`` does, the demo (its quick variant), then each
line of the README's block in one shell, which starts with ``source .venv/bin/activate``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTION = "## After `make demo`"


def readme_commands() -> list[str]:
    """The first ``bash`` block of the README's section, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, f"no bash block under {SECTION!r}"
    return [line.strip() for line in block.group(1).replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_block_starts_by_activating_the_environment():
    commands = readme_commands()
    assert commands[0] == "source .venv/bin/activate"
    assert all(c.startswith("cmt-deeplab ") for c in commands[1:])


@pytest.mark.slow  # a fresh install, the quick demo, 2 minutes of training: 12 min on a busy 2-core machine
@pytest.mark.timeout(3600)
def test_readme_commands_run_in_order_on_a_fresh_venv(tmp_path):
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
           str(REPO / "constraints.txt")]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1200)  # as the Makefile
    subprocess.run([*pip, "-e", str(REPO)], check=True, timeout=1200)
    # A newcomer's shell: no other environment on PATH.
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if ".venv" not in p)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
    subprocess.run([str(venv / "bin" / "cmt-deeplab"), "demo", "--out", "demo_out", "--quick",
                    "--no-progress"], cwd=tmp_path, env=env, check=True, timeout=1800)
    script = "set -euo pipefail\n" + "\n".join(readme_commands()) + "\n"
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "cmt-deeplab-tiny" in result.stdout  # models
    assert len(list((tmp_path / "preds").rglob("*.png"))) >= 4
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert (tmp_path / "maps" / "clustering.png").is_file()
    assert "with config synthetic_cmt_deeplab_tiny" in result.stderr
    assert (tmp_path / "runs" / "tiny" / "model.safetensors").is_file()
