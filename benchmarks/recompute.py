"""Peak training memory and step time with activation recompute (``model.recompute``) against
the plain path, on this machine's CPU.

    python benchmarks/recompute.py [--models cmt-deeplab-s,max-deeplab-s] [--crop 641]
        [--batches 1,2] [--modes none,axial,blocks] [--rounds 2] [--steps 2] [--threads 2]
        [--device cuda]

One step = what ``Trainer`` runs: forward, every loss term with Hungarian matching, backward,
the optimizer (each model's shipped COCO config, 133 classes, 128 slots, drop path on), on
random batches at the crop. Each (model, batch, mode) runs in a fresh process, as a training
run would: one warm-up step (it allocates the optimizer state), then ``--steps`` measured
steps. The processes of the modes take turns for ``--rounds`` rounds, so a load change on a
shared machine hits every mode alike; medians are reported and the ratios to ``none``.

A fresh process per mode matters on the CPU: glibc's heap keeps the layout a step left behind,
and a ``blocks`` step run after a ``none`` step in the same process placed its tensors in the
holes of the larger heap and peaked 0.2-0.9 GiB higher (MaX-S, 641x641) than in a run of its own.

Memory is the step's peak resident-memory increase over the resident size just before it
(``/proc/self/clear_refs`` resets the peak; freed heap memory is handed back with
``malloc_trim`` first), with the model, the gradients of the previous step freed, and the
optimizer state already resident: the memory a step needs beyond the model and optimizer. The
trainer's allocator tuning (``run.keep_freed_memory``) is on, as in training. The resident
model + optimizer state is printed once per process. On CUDA the peak is
``max_memory_allocated`` above the allocated memory before the step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import host_probe, report_load  # noqa: E402

from cmt_deeplab.data.random_batch import random_batch  # noqa: E402
from cmt_deeplab.engine.config import load_train_config  # noqa: E402
from cmt_deeplab.engine.trainer import Trainer  # noqa: E402
from cmt_deeplab.models import RECOMPUTE_MODES, set_recompute  # noqa: E402
from cmt_deeplab.utils.process_memory import current_rss_bytes, track_peak_memory  # noqa: E402

CONFIGS = {"cmt-deeplab-s": "coco_cmt_deeplab_s", "max-deeplab-s": "coco_max_deeplab_s",
           "cmt-deeplab-tiny": "synthetic_cmt_deeplab_tiny"}
GIB = 2**30


def _release_freed_memory() -> None:
    gc.collect()
    # Not glibc: the peak then includes memory the allocator kept.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _trainer(model: str, crop: int, batch: int, device: str) -> Trainer:
    values = {"run.batch_size": batch, "run.device": device, "run.amp": "none",
              "run.num_workers": 0, "run.eval_every": 0, "data.train_split": None,
              "data.val_split": None, "input.crop": [crop, crop]}
    return Trainer(load_train_config(CONFIGS[model], values=values), None, progress=False)


def _resident(device: torch.device) -> int:
    """Memory held now: resident (after handing freed heap back) or CUDA allocated."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    _release_freed_memory()
    return current_rss_bytes()


def run_worker(model: str, crop: int, batch: int, mode: str, steps: int, device: str) -> dict:
    """One training process in ``mode``: a warm-up step, then ``steps`` measured ones."""
    torch_device = torch.device(device)
    before = _resident(torch_device)
    trainer = _trainer(model, crop, batch, device)
    set_recompute(trainer.model, mode)
    trainer.criterion.recompute = mode == "blocks"  # as the trainer sets it
    batches = itertools.cycle([random_batch(batch, (crop, crop), trainer.num_classes,
                                            trainer.num_thing_classes, seed=i) for i in range(2)])
    seconds, peaks = [], []
    for step in range(steps + 1):
        _release_freed_memory()
        with track_peak_memory(torch_device) as memory:
            start = time.perf_counter()
            trainer.train_step(batches)
        if step:  # step 0 allocates the optimizer state
            seconds.append(time.perf_counter() - start)
            peaks.append(memory.increase)
    return {"seconds": seconds, "peak": peaks, "resident": _resident(torch_device) - before}


def measure(model: str, crop: int, batch: int, modes: list[str], rounds: int, steps: int,
            threads: int, device: str = "cpu") -> dict:
    """``{mode: {"seconds": [...], "peak": [...]}}``: each mode in its own process, the
    processes alternating over ``rounds``."""
    results: dict[str, dict[str, list[float]]] = {m: {"seconds": [], "peak": []} for m in modes}
    for round_index in range(rounds):
        for mode in modes:
            command = [sys.executable, __file__, "--worker", f"{model},{batch},{mode}",
                       "--crop", str(crop), "--steps", str(steps), "--threads", str(threads),
                       "--device", device]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            for key in ("seconds", "peak"):
                results[mode][key] += result[key]
            steps_text = ", ".join(f"{s:.2f} s +{p / GIB:.2f} GiB"
                                   for s, p in zip(result["seconds"], result["peak"], strict=True))
            print(f"  {model} batch {batch} {mode:6} round {round_index + 1}: {steps_text} "
                  f"(model and optimizer state {result['resident'] / GIB:.2f} GiB)", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--crop", type=int, default=641)
    parser.add_argument("--batches", default="1,2")
    parser.add_argument("--modes", default=",".join(RECOMPUTE_MODES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="measured steps per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # MODEL,BATCH,MODE: one process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        model, batch, mode = args.worker.split(",")
        print(json.dumps(run_worker(model, args.crop, int(batch), mode, args.steps, args.device)))
        return
    modes = args.modes.split(",")
    if modes[0] != "none":
        parser.error("--modes must start with none (the baseline of the ratios)")
    print(report_load())
    print(host_probe(), flush=True)
    rows = []
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            results = measure(model, args.crop, batch, modes, args.rounds, args.steps,
                              args.threads, args.device)
            base = results["none"]
            base_peak = statistics.median(base["peak"])
            base_seconds = statistics.median(base["seconds"])
            for mode in modes:
                peak = statistics.median(results[mode]["peak"])
                seconds = statistics.median(results[mode]["seconds"])
                rows.append((model, batch, mode, peak, seconds, 1 - peak / base_peak,
                             seconds / base_seconds))
    print(f"\n{report_load()}; {host_probe()}")
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") \
        else f"cpu, {args.threads} threads"
    print(f"\ncrop {args.crop}x{args.crop}, {where}, medians of {args.rounds} alternating "
          f"rounds x {args.steps} steps, a fresh process per mode\n")
    print("| model | batch | recompute | peak step memory | per image | step time | memory saved "
          "| time ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for model, batch, mode, peak, seconds, saved, ratio in rows:
        print(f"| {model} | {batch} | {mode} | {peak / GIB:.2f} GiB | {peak / batch / GIB:.2f} GiB "
              f"| {seconds:.2f} s | {100 * saved:.0f}% | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
