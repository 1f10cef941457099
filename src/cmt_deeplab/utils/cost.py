"""Parameters, MACs, latency and peak memory of a model at an input size (the paper's Table 2
columns). MACs are counted on the meta device; latency and memory need a real forward."""

from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

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
    train_recompute: str | None = None

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
    recompute: str = "none", **kwargs,
) -> tuple[int, str]:
    """Peak memory per image of one training step (forward, losses with matching, backward)
    at ``crop``: CUDA peak allocated, or on CPU the peak resident-memory increase.

    ``recompute`` is the ``model.recompute`` mode (``models/layers/recompute.py``).
    Returns ``(bytes_per_image, kind)``; the optimizer state is not included. On the CPU the
    step runs in a fresh process: memory a previous forward left to the allocator would
    otherwise hide part of the peak.

    Raises:
        MemoryError: the step did not fit (the CPU process failed to allocate or was killed).
    """
    if torch.device(device).type == "cpu":
        return _in_fresh_process(name, crop, batch_size, recompute, kwargs)
    return _training_memory(name, crop, device, batch_size, recompute, **kwargs)


def _in_fresh_process(
    name: str, crop: tuple[int, int], batch_size: int, recompute: str, kwargs: dict
) -> tuple[int, str]:
    """``_training_memory`` on the CPU in a spawned process. A process, not a pool: a step that
    does not fit may get the process killed by the kernel, which a pool would wait on forever."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_report_training_memory,
                              args=(sender, name, crop, batch_size, recompute, kwargs))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = None
    process.join()
    if result is None and process.exitcode == -9:
        raise MemoryError(f"{name} at {crop[0]}x{crop[1]}: the training step was killed "
                          "(SIGKILL: usually the kernel's out-of-memory killer)")
    if result is None:
        raise RuntimeError(f"the training-memory process of {name} exited with code "
                           f"{process.exitcode}")
    if isinstance(result, BaseException):
        raise result
    return result


def _report_training_memory(
    sender: Any, name: str, crop: tuple[int, int], batch_size: int, recompute: str,
    kwargs: dict,
) -> None:
    try:
        result: Any = _training_memory(name, crop, "cpu", batch_size, recompute, **kwargs)
    except RuntimeError as error:  # "DefaultCPUAllocator: can't allocate memory"
        result = MemoryError(f"{name} at {crop[0]}x{crop[1]}: {error}") \
            if "allocate" in str(error) else error
    except Exception as error:  # noqa: BLE001  (handed to the parent, which raises it)
        result = error
    sender.send(result)
    sender.close()


def _training_memory(
    name: str, crop: tuple[int, int], device: str | torch.device, batch_size: int,
    recompute: str = "none", **kwargs,
) -> tuple[int, str]:
    from cmt_deeplab.engine.data import random_batch
    from cmt_deeplab.losses import PanopticCriterion
    from cmt_deeplab.models import set_recompute

    device = torch.device(device)
    model = set_recompute(build_model(name, **kwargs), recompute).to(device).train()
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
