"""What ``run.keep_freed_memory`` (glibc thresholds, ``utils/allocator.py``) saves on a CPU
training step: seconds and page faults per step with it on and off, same run.

    python benchmarks/cpu_allocator.py [--rounds 3] [--steps 3] [--threads 2]

The setting is per process and cannot be undone inside one, so each measurement is a fresh
process (``--child``), alternating on/off for ``--rounds`` rounds; medians are compared.
Workloads: ``cmt-deeplab-tiny`` (133 classes, 64 slots) at the COCO-overfit canvas (705x1025,
batch 2) and at 97x97 (batch 8; the synthetic benchmark's crop until 2026-11-28), on random batches.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import report_load  # noqa: E402
from _train_speed import _trainer_step  # noqa: E402

#: name -> (crop, batch); the model has the trainer's default (COCO) 133 classes, 80 things.
WORKLOADS = {
    "tiny 705x1025 batch 2": ((705, 1025), 2),
    "tiny 97x97 batch 8": ((97, 97), 8),
}


def child(name: str, keep: bool, steps: int, threads: int) -> None:
    """Times ``steps`` training steps after one warm-up; prints seconds and faults per step."""
    torch.set_num_threads(threads)
    crop, batch = WORKLOADS[name]
    step, _ = _trainer_step("synthetic_cmt_deeplab_tiny",
                            {"run.keep_freed_memory": keep, "model.num_slots": 64}, None, crop,
                            batch)
    step()  # warm-up (and optimizer state allocation)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    print(json.dumps({"seconds": seconds, "faults": faults}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "KEEP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "1", args.steps, args.threads)
        return
    print(report_load())
    print(f"{'workload':38} {'keep':>5} {'s/step':>8} {'faults/step':>12}")
    for name in args.workloads.split(","):
        results: dict[bool, list[dict]] = {True: [], False: []}
        for _ in range(args.rounds):
            for keep in (False, True):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, str(int(keep)), "--steps",
                     str(args.steps), "--threads", str(args.threads)],
                    capture_output=True, text=True, check=True)
                results[keep].append(json.loads(out.stdout.strip().splitlines()[-1]))
        medians = {}
        for keep in (False, True):
            seconds = statistics.median(r["seconds"] for r in results[keep])
            faults = statistics.median(r["faults"] for r in results[keep])
            medians[keep] = seconds
            print(f"{name:38} {'on' if keep else 'off':>5} {seconds:8.3f} {faults:12.0f}")
        print(f"{name}: step time off / on = {medians[False] / medians[True]:.2f}x")
    print(report_load())


if __name__ == "__main__":
    main()
