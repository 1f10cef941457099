"""TensorBoard scalars of a run (rank 0): each loss term, the learning rates, the gradient
norm, the epoch, and the PQ of each evaluation. The writer opens at the first scalar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: The evaluation numbers logged as ``eval/<key>``.
EVAL_KEYS = ("pq", "pq_things", "pq_stuff", "sq", "rq", "miou")


class TrainLog:
    """Writes ``OUT/events.*``; ``out_dir=None`` (other ranks, dry runs) writes nothing."""

    def __init__(self, out_dir: str | Path | None) -> None:
        self.out_dir = out_dir
        self._writer: Any = None

    def training(
        self, step: int, losses: dict[str, float], optimizer: torch.optim.Optimizer,
        grad_norm: float | None, epoch: int,
    ) -> None:
        writer = self._open()
        if writer is None:
            return
        for name, value in losses.items():
            writer.add_scalar(f"loss/{name}", value, step)
        for group in optimizer.param_groups:
            writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], step)
        if grad_norm is not None:
            writer.add_scalar("train/grad_norm", grad_norm, step)
        writer.add_scalar("train/epoch", epoch, step)

    def evaluation(self, step: int, entry: dict[str, Any]) -> None:
        writer = self._open()
        if writer is not None:
            for key in EVAL_KEYS:
                writer.add_scalar(f"eval/{key}", entry[key], step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open(self) -> Any:
        if self.out_dir is None:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir))
        return self._writer
