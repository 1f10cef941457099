"""Parameters, MACs, latency and peak memory of a model at an input size (the paper's Table 2
columns). MACs are counted on the meta device; latency and memory need a real forward, the
training memory a step with every loss term (``data.random_batch`` targets)."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cmt_deeplab.data.random_batch import random_batch
from cmt_deeplab.models import build_model, count_parameters, model_spec, set_recompute
from cmt_deeplab.utils.flops import count_macs
from cmt_deeplab.utils.process_memory import track_peak_memory


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
        with track_peak_memory(device) as memory:
            model(images)
        row.peak_mem_bytes, row.peak_mem_kind = memory.increase, memory.kind
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
    # Here, not at the top: the losses (scipy's matcher) load only for this measurement.
    from cmt_deeplab.losses.criterion import PanopticCriterion

    device = torch.device(device)
    model = set_recompute(build_model(name, **kwargs), recompute).to(device).train()
    spec = model_spec(model).kwargs
    criterion = PanopticCriterion(spec["num_classes"])
    images, targets = random_batch(batch_size, crop, spec["num_classes"], spec["num_thing_classes"])
    images = images.to(device)
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    gc.collect()
    with track_peak_memory(device) as memory:
        criterion(model(images), targets)["loss"].backward()
    return memory.increase // batch_size, memory.kind
