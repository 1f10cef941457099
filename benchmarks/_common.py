"""Shared helpers of the benchmark scripts: load check, GEMM roof, timing, MAC counting, a
fresh training run scored on its val split."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def report_load() -> str:
    """``uptime``-style load: benchmarks on a busy machine are noise; say so in the output."""
    one, five, _ = os.getloadavg()
    cpus = os.cpu_count() or 1
    note = "" if one < 0.5 * cpus else "  (WARNING: machine busy, timings unreliable)"
    return f"load average {one:.2f} / {five:.2f} on {cpus} CPUs{note}"


def host_probe() -> str:
    """How fast the host is right now: per-op overhead (mean microseconds of an in-place add on
    a 4-element tensor) and a 512^3 fp32 GEMM's GMAC/s. A tiny-model training step is bound by
    ~10k such dispatches plus small GEMMs; on a shared host both move within minutes (the op
    2.5-5.0 us, the GEMM ~50-100 GMAC/s on 2026-11-28), so printing them beside a step time tells
    a slow host from a slow change."""
    x = torch.zeros(4)
    for _ in range(1000):
        x.add_(1)
    repeats = 20_000
    start = time.perf_counter()
    for _ in range(repeats):
        x.add_(1)
    per_op = (time.perf_counter() - start) / repeats * 1e6
    return f"host probe: {per_op:.2f} us/op, GEMM {gemm_peak_gmacs(512, repeats=20):.0f} GMAC/s"


def gemm_peak_gmacs(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best-of-``repeats`` fp32 square GEMM throughput in GMAC/s: the roof to compare with."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return size**3 / best / 1e9


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, device: str = "cpu") -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_medians(
    calls: dict[str, Callable[[], object]], rounds: int, repeats: dict[str, int] | None = None
) -> dict[str, float]:
    """Median seconds of one call of each, timed in alternating rounds (``repeats[name]``
    calls per round, default 1): a load change on a shared machine then hits all alike."""
    repeats = repeats or {}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            count = repeats.get(name, 1)
            start = time.perf_counter()
            for _ in range(count):
                call()
            times[name].append((time.perf_counter() - start) / count)
    return {name: statistics.median(values) for name, values in times.items()}


def count_forward_macs(fn: Callable[[], object]) -> int:
    """MACs of one call with torch's FlopCounterMode (FLOPs / 2), the same rule for every model."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() // 2


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def train_and_score(config: Any, out: Path, progress: bool = False) -> tuple[Any, dict, float]:
    """A fresh run of ``config`` in ``out`` (an earlier one there is removed), then PQ of the
    final model on every image of the config's val split.

    Returns:
        ``(trainer, evaluate_model's result, training seconds)``.
    """
    import shutil

    from cmt_deeplab.engine.evaluate import evaluate_model
    from cmt_deeplab.engine.trainer import Trainer

    if out.exists():
        shutil.rmtree(out)
    trainer = Trainer(config, out, progress=progress)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    ev = config.evaluation
    result = evaluate_model(trainer.model, config.data.open("val"), config.eval_size,
                            trainer.device, ev.method, 0, ev.batch_size,
                            class_threshold=ev.class_threshold,
                            pixel_threshold=ev.pixel_threshold)
    return trainer, result, seconds
