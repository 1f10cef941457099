"""``train --dry-run``: one training step at the configured crop and batch, its peak memory
and time; nothing is written. Without a training split the step runs on random data with
the config's model (COCO's class counts)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cmt_deeplab.data.random_batch import random_batch
from cmt_deeplab.utils.process_memory import track_peak_memory

if TYPE_CHECKING:
    from cmt_deeplab.engine.trainer import Trainer


def dry_run(trainer: Trainer) -> dict[str, Any]:
    """Returns ``{"peak_memory_bytes", "memory_kind", "baseline_bytes", "seconds", "loss",
    "micro_batch", "accumulate", "crop", "device", "model"}``; on CUDA the peak is
    ``max_memory_allocated``, on the CPU the increase of the peak resident set size over the
    resident size before the step."""
    run = trainer.config.run
    crop = tuple(trainer.config.input.crop)
    with track_peak_memory(trainer.device) as memory:
        start = time.perf_counter()
        if trainer.batches is not None:
            losses, _ = trainer.train_step()
        else:
            batches = iter([random_batch(trainer.micro_batch, crop, trainer.num_classes,
                                         trainer.num_thing_classes, seed=i)
                            for i in range(run.accumulate)])
            losses, _ = trainer.train_step(batches)
    seconds = time.perf_counter() - start
    peak = memory.peak if trainer.device.type == "cuda" else memory.increase
    return {"peak_memory_bytes": int(peak), "memory_kind": memory.kind,
            "baseline_bytes": int(memory.base), "seconds": seconds,
            "loss": float(losses["loss"]), "micro_batch": trainer.micro_batch,
            "accumulate": run.accumulate, "crop": list(crop),
            "device": str(trainer.device), "model": trainer.config.model.name}
