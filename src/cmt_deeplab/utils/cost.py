"""Parameters, MACs, latency and peak memory of a model at an input size (the paper's Table 2
columns). MACs are counted on the meta device; latency and memory need a real forward."""

from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import asdict, dataclass

import torch

from cmt_deeplab.models import build_model, count_parameters, model_spec
from cmt_deeplab.utils.flops import count_macs
from cmt_deeplab.utils.process_memory import current_rss_bytes, peak_rss_bytes


@dataclass
class CostRow:
    model: str
    height: int
    width: int
    params: int
    params_paper: int
    gmacs: float
    fps: float | None = None
    latency_s: float | None = None
    peak_mem_bytes: int | None = None
    peak_mem_kind: str | None = None
    device: str | None = None
    train_mem_bytes: int | None = None
    train_mem_kind: str | None = None
    train_crop: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def count_model_parameters(name: str, **kwargs) -> tuple[int, int]:
    """``(total, paper-comparable)`` trainable parameters, built on the meta device."""
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    return count_parameters(model), count_parameters(model, paper=True)


class _PeakRSS:
    """Samples the resident set size in a thread; ``peak`` is the largest increase seen."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _PeakRSS:
        self._base = current_rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes() - self._base)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_bytes() - self._base)


def measure_cost(
    name: str,
    height: int,
    width: int,
    timing: bool = True,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    **kwargs,
) -> CostRow:
    """One row of the cost table: counts always; latency, FPS and peak forward memory
    (CUDA peak allocated, or on CPU the peak resident-memory increase) unless ``timing=False``."""
    params, params_paper = count_model_parameters(name, **kwargs)
    macs = count_macs(lambda: build_model(name, **kwargs), height, width)
    row = CostRow(name, height, width, params, params_paper, macs / 1e9)
    if not timing:
        return row
    device = torch.device(device)
    model = build_model(name, **kwargs).to(device).eval()
    images = torch.zeros(1, 3, height, width, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(images)
        _synchronize(device)
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            _synchronize(device)
            times.append(time.perf_counter() - start)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            model(images)
            row.peak_mem_bytes = torch.cuda.max_memory_allocated(device) - base
            row.peak_mem_kind = "cuda peak allocated"
        else:
            with _PeakRSS() as peak:
                model(images)
            row.peak_mem_bytes = peak.peak
            row.peak_mem_kind = "cpu peak RSS increase"
    row.latency_s = statistics.median(times)
    row.fps = 1.0 / row.latency_s
    row.device = _device_name(device)
    return row


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def measure_training_memory(
    name: str, crop: tuple[int, int], device: str | torch.device = "cpu", batch_size: int = 1,
    **kwargs,
) -> tuple[int, str]:
    """Peak memory per image of one training step (forward, losses with matching, backward)
    at ``crop``: CUDA peak allocated, or on CPU the peak resident-memory increase.

    Returns ``(bytes_per_image, kind)``; the optimizer state is not included. On the CPU the
    step runs in a fresh process: memory a previous forward left to the allocator would
    otherwise hide part of the peak.
    """
    if torch.device(device).type == "cpu":
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_training_memory, (name, crop, "cpu", batch_size), kwargs)
    return _training_memory(name, crop, device, batch_size, **kwargs)


def _training_memory(
    name: str, crop: tuple[int, int], device: str | torch.device, batch_size: int, **kwargs
) -> tuple[int, str]:
    from cmt_deeplab.engine.data import random_batch
    from cmt_deeplab.losses import PanopticCriterion

    device = torch.device(device)
    model = build_model(name, **kwargs).to(device).train()
    spec = model_spec(model).kwargs
    criterion = PanopticCriterion(spec["num_classes"])
    images, targets = random_batch(batch_size, crop, spec["num_classes"], spec["num_thing_classes"])
    images = images.to(device)
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        criterion(model(images), targets)["loss"].backward()
        torch.cuda.synchronize(device)
        peak, kind = torch.cuda.max_memory_allocated(device) - base, "cuda peak allocated"
    else:
        base = current_rss_bytes()
        criterion(model(images), targets)["loss"].backward()
        # This fresh process's peak: the step's, since the model is built.
        peak = max(0, peak_rss_bytes() - base)
        kind = "cpu peak RSS increase"
    return peak // batch_size, kind
