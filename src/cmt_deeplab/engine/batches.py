"""The training split as an endless, resumable stream of micro-batches.

The order is a function of the seed and the position alone: epoch ``e`` shuffles by
``seed + e`` (``ResumableSampler``, this rank's share), the dataset draws the augmentation of
item ``i`` from ``[seed, e, i]`` and the loader's workers are seeded from a generator re-seeded
every epoch. So a run resumed at ``(epoch, batch_in_epoch)`` sees the same batches as an
uninterrupted one, with any number of loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from cmt_deeplab.data.collate import collate_batch
from cmt_deeplab.engine.distributed import DistributedContext, ResumableSampler
from cmt_deeplab.engine.rng_state import seed_worker

Batch = tuple[torch.Tensor, list[dict[str, Any]]]


@dataclass(eq=False)
class TrainBatches:
    """``next(batches)`` -> the next micro-batch ``(images [B, 3, H, W], targets)``, starting
    a new epoch (a new order) when one runs out.

    Args:
        dataset: the training split (``set_epoch`` selects its augmentation draws).
        micro_batch: images per micro-batch on this process.
        seed: ``run.seed``.
        num_workers: loader worker processes.
        dist: the process group (each rank reads its share).
        pin_memory: pin host memory (for CUDA).

    ``epoch`` and ``batch_in_epoch`` (micro-batches of this rank consumed in the epoch) are the
    position a training state stores; set them before the first ``next`` to resume.
    """

    dataset: Any
    micro_batch: int
    seed: int
    num_workers: int
    dist: DistributedContext
    pin_memory: bool = False
    epoch: int = 0
    batch_in_epoch: int = 0
    _loader: DataLoader | None = field(default=None, init=False, repr=False)
    _iterator: Iterator | None = field(default=None, init=False, repr=False)

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> Batch:
        if self._loader is None:
            self._build_loader()
        while True:
            if self._iterator is None:
                self._sampler.set_position(self.epoch, self.batch_in_epoch * self.micro_batch)
                self.dataset.set_epoch(self.epoch)
                self._generator.manual_seed(self.seed * 1_000_003 + self.epoch)
                self._iterator = iter(self._loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            self.batch_in_epoch += 1
            return batch

    def close(self) -> None:
        """Stops the loader's workers (the position is kept)."""
        self._iterator = None

    def _build_loader(self) -> None:
        self._sampler = ResumableSampler(self.dataset, num_replicas=self.dist.world_size,
                                         rank=self.dist.rank, seed=self.seed)
        if len(self._sampler) < self.micro_batch:
            raise ValueError(
                f"the training split has {len(self.dataset)} images, fewer than one batch of "
                f"{self.micro_batch} per process x {self.dist.world_size} process(es)"
            )
        self._generator = torch.Generator()
        self._loader = DataLoader(
            self.dataset, batch_size=self.micro_batch, sampler=self._sampler,
            num_workers=self.num_workers, collate_fn=collate_batch, drop_last=True,
            pin_memory=self.pin_memory, generator=self._generator, worker_init_fn=seed_worker,
        )
