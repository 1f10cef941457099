"""glibc allocator tuning (``utils/allocator.py``): freed large blocks are reused, not re-faulted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = r"""
import json, resource, sys, torch
from cmt_deeplab.utils.allocator import keep_freed_memory

tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
faults = []
for _ in range(8):  # a training loop's pattern: the same large tensors, step after step
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    # 64 MiB and 20 MiB: above glibc's default (adaptive, at most 32 MiB) mmap threshold
    a = torch.empty(16 << 20).fill_(1.0)
    b = torch.empty(5 << 20).fill_(1.0)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "again": keep_freed_memory() if tuned else False,
                  "faults": faults}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_freed_block_is_reused_without_page_faults():
    default, tuned = _probe("default"), _probe("tuned")
    if not tuned["tuned"]:
        pytest.skip("not glibc (keep_freed_memory returned False)")
    assert tuned["again"] is True  # idempotent
    pages = (64 << 20) // 4096
    # Default: mmapped afresh and unmapped on free, so every step faults every page again.
    assert min(default["faults"][-3:]) > pages // 2
    # Tuned: after a few steps (aligned blocks settle in the heap) the freed memory is reused.
    assert sum(tuned["faults"][-3:]) < pages // 10


def test_trainer_setting_can_be_turned_off():
    from cmt_deeplab.engine.config import load_train_config

    config = load_train_config("synthetic_cmt_deeplab_tiny", ["run.keep_freed_memory=false"])
    assert config.run.keep_freed_memory is False
