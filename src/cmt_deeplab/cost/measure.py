"""Parameters, MACs, latency and peak memory of a model at an input size (the paper's Table 2
columns). MACs are counted on the meta device; latency and memory need a real forward, the
training memory a step with every loss term (``data.random_batch`` targets)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch

from cmt_deeplab.data.random_batch import random_batch
from cmt_deeplab.inference.fast import optimize_for_inference
from cmt_deeplab.models import build_model, count_parameters, model_spec, set_recompute
from cmt_deeplab.utils.allocator import keep_freed_memory
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
    #: Images/s of each extra backend (``measure_cost``'s ``backends``), same input and device.
    backend_fps: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def count_model_parameters(name: str, **kwargs) -> tuple[int, int]:
    """``(total, paper-comparable)`` trainable parameters, built on the meta device."""
    with torch.device("meta"):
        model = build_model(name, **kwargs)
    return count_parameters(model), count_parameters(model, paper=True)


#: A backend to time beside eager: ``(model in eval mode, input [1, 3, H, W]) -> a call that
#: runs one forward``. Module-level functions only: on the CPU they go to a spawned process.
Backend = Callable[[torch.nn.Module, torch.Tensor], Callable[[], Any]]


def inference_backend(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    """What ``predict`` runs in float32: the BN-folded, channels-last inference copy without
    the outputs only the losses read (``optimize_for_inference``)."""
    network = optimize_for_inference(model)
    images = images.contiguous(memory_format=torch.channels_last)
    return partial(network, images)


def bf16_backend(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    """``Predictor(precision="bf16")``'s path: the BN-folded, channels-last inference copy with
    its conv / linear weights in bf16, under bf16 autocast."""
    network = optimize_for_inference(model, weight_dtype=torch.bfloat16)
    images = images.contiguous(memory_format=torch.channels_last)

    def call() -> Any:
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            return network(images)
    return call


#: The extra backends of the cost package itself (the command adds the exported ones).
BACKENDS: dict[str, Backend] = {"inference": inference_backend, "bf16": bf16_backend}


def measure_cost(
    name: str,
    height: int,
    width: int,
    timing: bool = True,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    backends: Mapping[str, Backend] | None = None,
    **kwargs,
) -> CostRow:
    """One row of the cost table: counts always; latency, FPS and the peak memory of one
    forward (CUDA peak allocated, or on CPU the peak resident-memory increase) unless
    ``timing=False``; with ``backends``, the FPS of each (``Backend``, e.g.
    ``BACKENDS["bf16"]``) on the same input (``row.backend_fps``).

    On the CPU, eager and each backend run in a fresh process of their own, with torch's
    current thread count and glibc keeping freed blocks (``utils.allocator``) as ``predict``,
    ``evaluate`` and training run: one forward's freed tensors would otherwise be unmapped and
    page-faulted back in by the next, and a backend timed after another would inherit its heap.
    """
    params, params_paper = count_model_parameters(name, **kwargs)
    macs = count_macs(lambda: build_model(name, **kwargs), height, width)
    row = CostRow(name, height, width, params, params_paper, macs / 1e9)
    if not timing:
        return row
    device = torch.device(device)
    threads = torch.get_num_threads()

    def run(function: Callable[..., Any], what: str, *args: Any) -> Any:
        if device.type != "cpu":
            return function(*args)
        return _in_fresh_process(_on_cpu, what, threads, function, args)

    latency, row.peak_mem_bytes, row.peak_mem_kind, row.device = run(
        _forward_cost, f"the cost process of {name}", name, height, width, device, warmup,
        repeats, kwargs)
    row.backend_fps = {
        label: 1.0 / run(_backend_seconds, f"the {label} cost process of {name}", name, height,
                         width, device, warmup, repeats, kwargs, factory)
        for label, factory in (backends or {}).items()
    }
    row.latency_s = latency
    row.fps = 1.0 / latency
    return row


def _on_cpu(threads: int, function: Callable[..., Any], args: tuple) -> Any:
    """``function(*args)`` in a fresh CPU process, set up as ``predict`` runs."""
    torch.set_num_threads(threads)
    keep_freed_memory()
    return function(*args)


def _forward_cost(
    name: str, height: int, width: int, device: torch.device, warmup: int, repeats: int,
    kwargs: dict,
) -> tuple[float, int, str, str]:
    """``(median latency s, peak memory of the first forward, its kind, the device as timed)``
    of the eval module:
    ``warmup`` forwards, then the median of ``repeats``. Memory is taken on the first forward,
    before any other: a warm-up leaves its freed blocks to the allocator and a later forward
    reuses them without the resident size growing."""
    model = build_model(name, **kwargs).to(device).eval()
    images = torch.zeros(1, 3, height, width, device=device)
    with torch.inference_mode():
        gc.collect()
        with track_peak_memory(device) as memory:
            model(images)
        latency = _median_seconds(partial(model, images), device, warmup, repeats)
    return latency, memory.increase, memory.kind, _device_name(device)


def _backend_seconds(
    name: str, height: int, width: int, device: torch.device, warmup: int, repeats: int,
    kwargs: dict, factory: Backend,
) -> float:
    """Median seconds of one forward of ``factory``'s call, timed as eager is."""
    model = build_model(name, **kwargs).to(device).eval()
    images = torch.zeros(1, 3, height, width, device=device)
    with torch.inference_mode():
        call = factory(model, images)
        return _median_seconds(call, device, max(warmup, 1), repeats)


def _median_seconds(call: Callable[[], Any], device: torch.device, warmup: int,
                    repeats: int) -> float:
    for _ in range(warmup):  # a backend's first call sets it up: the caller asks for >= 1
        call()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
        return _in_fresh_process(_training_memory_of, f"the training step of {name} at {crop[0]}x{crop[1]}",
                                 name, crop, "cpu", batch_size, recompute, kwargs)
    return _training_memory(name, crop, device, batch_size, recompute, **kwargs)


def _in_fresh_process(function: Callable[..., Any], what: str, *args: Any) -> Any:
    """``function(*args)`` in a spawned process: memory a previous measurement left to the
    allocator would otherwise hide part of the peak. A process, not a pool: a step that does
    not fit may get the process killed by the kernel, which a pool would wait on forever.

    Raises:
        MemoryError: the process failed to allocate or was killed (SIGKILL: the OOM killer).
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_report, args=(sender, function, what, args))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = None
    process.join()
    if result is None and process.exitcode == -9:
        raise MemoryError(f"{what} was killed (SIGKILL: usually the kernel's out-of-memory "
                          "killer)")
    if result is None:
        raise RuntimeError(f"{what} exited with code {process.exitcode}")
    if isinstance(result, BaseException):
        raise result
    return result


def _report(sender: Any, function: Callable[..., Any], what: str, args: tuple) -> None:
    try:
        result: Any = function(*args)
    except RuntimeError as error:  # "DefaultCPUAllocator: can't allocate memory"
        result = MemoryError(f"{what}: {error}") if "allocate" in str(error) else error
    except Exception as error:  # noqa: BLE001  (handed to the parent, which raises it)
        result = error
    sender.send(result)
    sender.close()


def _training_memory_of(
    name: str, crop: tuple[int, int], device: str, batch_size: int, recompute: str,
    kwargs: dict,
) -> tuple[int, str]:
    return _training_memory(name, crop, device, batch_size, recompute, **kwargs)


def _training_memory(
    name: str, crop: tuple[int, int], device: str | torch.device, batch_size: int,
    recompute: str = "none", **kwargs,
) -> tuple[int, str]:
    # Here, not at the top: the losses (scipy's matcher) load only for this measurement.
    from cmt_deeplab.losses.criterion import PanopticCriterion

    device = torch.device(device)
    model = set_recompute(build_model(name, **kwargs), recompute).to(device).train()
    spec = model_spec(model).kwargs
    criterion = PanopticCriterion(spec["num_classes"], recompute=recompute == "blocks")
    images, targets = random_batch(batch_size, crop, spec["num_classes"], spec["num_thing_classes"])
    images = images.to(device)
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    gc.collect()
    with track_peak_memory(device) as memory:
        criterion(model(images), targets)["loss"].backward()
    return memory.increase // batch_size, memory.kind
