"""Checks before a run starts: will its settings fit the machine's memory, and will its
learning rate finish the warm-up?

A run whose batch x crop cannot fit used to start, load data for a minute and then lose a
DataLoader worker to the kernel's OOM killer with no word of why; a run shorter than its
warm-up trained at a tiny learning rate in silence. Both are said before the first step.

The memory estimate is a lower bound of one process's peak, in three parts:

- weights: parameters, their gradients and the optimizer's state (Adam: two moments), float32;
- activations: what the forward of one micro-batch keeps for backward, counted exactly by a
  forward on the ``meta`` device (no compute, no memory) under a ``saved_tensors_hooks``,
  each storage once. Against the measured peaks of whole steps (benchmarks/README.md,
  641x641, batch 1-2) it is 66-71%: CMT-S counts 4.1 GiB per image against 6.2-6.3, MaX-S
  2.8 against 4.0-4.2; the loss terms and the backward's transients come on top;
- data: the batches the loader holds, ``num_workers x prefetch_factor`` in flight plus the one
  being trained, at ``_SAMPLE_BYTES_PER_PIXEL`` bytes per crop pixel.

On CUDA the weights and activations are compared with the GPU's free memory and the data with
the host's; on the CPU all of it, times the processes of this node, with the host's available
memory (the smaller of ``MemAvailable`` and the cgroup's limit).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cmt_deeplab.engine.optim import poly_lr_factor
from cmt_deeplab.models import build_model, set_recompute
from cmt_deeplab.utils.process_memory import format_bytes

if TYPE_CHECKING:
    from cmt_deeplab.engine.config import TrainConfig

#: One training sample per crop pixel: image float32 x 3 (12), void bool (1), semantic and
#: panoptic int64 (16), and ~10 boolean segment masks (COCO averages 11 segments per image).
_SAMPLE_BYTES_PER_PIXEL = 39
#: Batches a DataLoader worker loads ahead (torch's default ``prefetch_factor``).
_PREFETCH_FACTOR = 2
#: Bytes per parameter: weight, gradient and Adam's two moments, float32.
_BYTES_PER_PARAMETER = 16


class RunDoesNotFit(MemoryError, ValueError):
    """The run's settings cannot fit the machine's memory (a ``ValueError`` too, so that
    the command line prints it as an error about the settings)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one run (see the module notes); ``available`` is ``None`` where unknown."""

    weights: int
    activations: int
    data: int
    processes: int
    device: str
    model_available: int | None
    host_available: int | None

    @property
    def model_total(self) -> int:
        """Weights and activations of every process on the device that holds them."""
        return (self.weights + self.activations) * (self.processes if self.device == "cpu"
                                                     else 1)

    @property
    def host_total(self) -> int:
        """What the host's memory holds: the data of every process (and on the CPU the model)."""
        return self.data * self.processes + (self.model_total if self.device == "cpu" else 0)

    def problem(self) -> str | None:
        """Why the run cannot fit, with the numbers, or ``None``."""
        parts = (f"weights + gradients + Adam state {format_bytes(self.weights)}, activations "
                 f"kept for backward {format_bytes(self.activations)}"
                 + (f", batches held by the data loader {format_bytes(self.data)}"
                    if self.data else "")
                 + (f", x {self.processes} processes" if self.processes > 1 else ""))
        if self.device != "cpu" and self.model_available is not None \
                and self.model_total > self.model_available:
            return (f"needs at least {format_bytes(self.model_total)} of {self.device} memory "
                    f"({parts}), {format_bytes(self.model_available)} free")
        if self.host_available is not None and self.host_total > self.host_available:
            return (f"needs at least {format_bytes(self.host_total)} of memory ({parts}), "
                    f"this machine has {format_bytes(self.host_available)} available")
        return None


def estimate_memory(
    config: TrainConfig, device: torch.device, micro_batch: int, num_classes: int,
    num_thing_classes: int, processes: int = 1, loads_data: bool = True,
) -> MemoryEstimate:
    """The lower bound of the module notes for ``micro_batch`` images per forward
    (``loads_data`` False: random batches, no data loader, as in a dry run)."""
    height, width = config.input.crop
    activations, parameters = saved_activation_bytes(config, micro_batch, num_classes,
                                                     num_thing_classes)
    workers = config.run.num_workers
    held = workers * _PREFETCH_FACTOR + 1 if loads_data else 0
    data = held * micro_batch * height * width * _SAMPLE_BYTES_PER_PIXEL
    host = available_host_memory()
    on_device = None
    if device.type == "cuda":
        on_device = torch.cuda.mem_get_info(device)[0]
    return MemoryEstimate(parameters * _BYTES_PER_PARAMETER, activations, data, processes,
                          device.type if device.type == "cpu" else str(device), on_device, host)


def saved_activation_bytes(
    config: TrainConfig, micro_batch: int, num_classes: int, num_thing_classes: int,
) -> tuple[int, int]:
    """``(bytes the model's forward saves for backward, parameter count)`` for one
    micro-batch at the config's crop, counted on the ``meta`` device (nothing computed)."""
    height, width = config.input.crop
    model_config = config.model
    # The meta build must not move the run's random streams.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(model_config.name, num_classes=num_classes,
                            num_thing_classes=num_thing_classes,
                            num_slots=model_config.num_slots, **model_config.overrides)
        images = torch.empty(micro_batch, 3, height, width)
    set_recompute(model, model_config.recompute)
    memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format
    model = model.train().to(memory_format=memory_format)
    images = images.contiguous(memory_format=memory_format)
    # Each storage once (a tensor saved by several ops, views of one tensor), and not the
    # weights, which conv and linear save for backward too.
    weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}
    kept = []  # holds every saved tensor alive, so that no storage address is reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            storages[storage._cdata] = storage.nbytes()
            kept.append(tensor)
        return tensor

    with torch.random.fork_rng(devices=[]), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    saved = sum(storages.values())
    return saved, sum(p.numel() for p in model.parameters())


def available_host_memory() -> int | None:
    """Bytes this process may still allocate: ``MemAvailable``, capped by a cgroup (v2 or v1)
    limit less its usage; ``None`` where neither is known (not Linux)."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            limit = (Path("/sys/fs/cgroup") / limit_file).read_text().strip()
            usage = int((Path("/sys/fs/cgroup") / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # v1 writes "no limit" as ~2^63
            candidates.append(max(0, int(limit) - usage))
    return min(candidates) if candidates else None


def warmup_problem(config: TrainConfig) -> str | None:
    """Why the learning rate will not reach ``optimizer.lr``, with the numbers, or ``None``."""
    steps, warmup = config.run.steps, config.schedule.warmup_steps
    if warmup <= 0 or steps > warmup:
        return None
    schedule = config.schedule
    peak = max(poly_lr_factor(step, steps, warmup, schedule.power, schedule.end_lr_factor)
               for step in range(steps))
    return (f"run.steps={steps} ends inside the warm-up (schedule.warmup_steps={warmup}): the "
            f"learning rate rises to at most {peak * config.optimizer.lr:.3g} of optimizer.lr="
            f"{config.optimizer.lr:.3g} and never decays; set --set schedule.warmup_steps=N "
            f"below {steps} (e.g. {max(1, steps // 10)}) or train for more steps")


def preflight(
    config: TrainConfig, device: torch.device, micro_batch: int, num_classes: int,
    num_thing_classes: int, loads_data: bool = True, check_memory: bool = True,
    check_schedule: bool = True,
) -> MemoryEstimate | None:
    """Raises ``RunDoesNotFit`` naming the settings and the numbers when the run cannot fit
    (``check_memory``); warns when it ends inside its warm-up (``check_schedule``). Returns
    the estimate."""
    problem = warmup_problem(config) if check_schedule else None
    if problem is not None:
        warnings.warn(problem, stacklevel=3)
    if not check_memory:
        return None
    estimate = estimate_memory(config, device, micro_batch, num_classes, num_thing_classes,
                               local_processes(), loads_data)
    problem = estimate.problem()
    if problem is not None:
        height, width = config.input.crop
        run = config.run
        workers = f", {run.num_workers} data workers" if loads_data else ""
        raise RunDoesNotFit(
            f"{config.model.name} at batch {run.batch_size} ({micro_batch} image(s) per "
            f"forward) x crop {height}x{width}{workers} {problem}. Lower --batch-size or "
            "--crop, or use --set run.accumulate=N, --set model.recompute=blocks, fewer "
            "--num-workers; --no-memory-check starts anyway")
    return estimate


def local_processes() -> int:
    """Processes of this run on this machine (torchrun's ``LOCAL_WORLD_SIZE``, else 1)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


__all__ = ["MemoryEstimate", "RunDoesNotFit", "available_host_memory", "estimate_memory", "local_processes",
           "preflight", "saved_activation_bytes", "warmup_problem"]
