"""One optimizer update: ``run.accumulate`` micro-batches forward and backward, then the step
(the trainer then steps the lr schedule).

A non-finite loss term or gradient stops the run with a ``FloatingPointError`` that names the
term or the parameter and the step, before the optimizer step and before anything is written,
so the newest training state is the last good one. Under DDP every rank agrees on a
non-finite loss before backward (else the others would hang in the gradient all-reduce), and
only the last micro-batch of a step synchronises gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cmt_deeplab.engine.batches import Batch
from cmt_deeplab.engine.distributed import DistributedContext
from cmt_deeplab.engine.training_state import latest_checkpoint
from cmt_deeplab.losses.criterion import PanopticCriterion


@dataclass(eq=False)
class TrainStep:
    """``step(next_batch, step_number)`` -> ``(loss terms averaged over the micro-batches,
    detached; gradient norm, or None where it was not computed)``.

    Args:
        train_model: the model as trained (DDP-wrapped under ``torchrun``).
        model: the bare model (parameter names for errors).
        criterion, optimizer: the objective and the update.
        scaler: ``GradScaler`` for fp16 (it owns overflow handling), else ``None``.
        amp_dtype: autocast dtype, or ``None`` for float32.
        memory_format: of the input images (``torch.channels_last`` or contiguous).
        accumulate, grad_clip: ``run.accumulate``, ``run.grad_clip`` (0: off).
        dist, device: the process group and this rank's device.
        out_dir: where training states go, for the error's "last good state" (or ``None``).
    """

    train_model: nn.Module
    model: nn.Module
    criterion: PanopticCriterion
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    accumulate: int
    grad_clip: float
    dist: DistributedContext
    device: torch.device
    out_dir: Path | None
    parameters: list[nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        # Walking the module tree for the parameters costs ~2 ms a step on a tiny model.
        self.parameters = list(self.model.parameters())

    def __call__(
        self, next_batch: Callable[[], Batch], step: int
    ) -> tuple[dict[str, torch.Tensor], float | None]:
        """Optimizer step number ``step`` (from 1) over ``accumulate`` calls of ``next_batch``."""
        losses: dict[str, torch.Tensor] = {}
        step_losses = None  # the loss terms stacked, summed over the micro-batches
        for micro in range(self.accumulate):
            images, targets = next_batch()
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            sync = micro == self.accumulate - 1 or not self.dist.enabled
            context = self.train_model.no_sync() if not sync else contextlib.nullcontext()
            with context:
                losses = self._forward(images, targets, step)
                stacked = torch.stack([value.detach() for value in losses.values()])
                step_losses = stacked if step_losses is None else step_losses + stacked
                loss = losses["loss"] / self.accumulate
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
        grad_norm = self._check_and_clip_gradients(step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return dict(zip(losses, (step_losses / self.accumulate).unbind(), strict=True)), grad_norm

    def _forward(self, images: torch.Tensor, targets: list, step: int) -> dict[str, torch.Tensor]:
        """The loss terms of one micro-batch; every rank stops if any rank's are not finite."""
        error = None
        losses: dict[str, torch.Tensor] = {}
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            outputs = self.train_model(images)
            try:
                losses = self.criterion(outputs, targets)
            except FloatingPointError as exc:
                error = exc
        if self.dist.any_true(error is not None, self.device):
            where = f"rank {self.dist.rank}: {error}" if error is not None else \
                "another rank had a non-finite loss"
            raise FloatingPointError(
                f"non-finite loss at step {step} ({where}); stopped before the "
                f"optimizer step, nothing written{self._last_good()}")
        return losses

    def _check_and_clip_gradients(self, step: int) -> float | None:
        """Raises on a non-finite gradient (naming the parameter); clips if configured.

        With fp16 the scaler owns overflow handling (it skips such steps), so only clipping
        applies.
        """
        params = [p for p in self.parameters if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            if self.grad_clip > 0:
                return float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
            return None
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not bool(torch.isfinite(norm)):
            name = next(n for n, p in self.model.named_parameters()
                        if p.grad is not None and not bool(torch.isfinite(p.grad).all()))
            raise FloatingPointError(
                f"non-finite gradient of parameter {name!r} at step {step}; stopped before "
                f"the optimizer step, nothing written{self._last_good()}")
        if self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        return float(norm)

    def _last_good(self) -> str:
        latest = latest_checkpoint(self.out_dir) if self.out_dir is not None else None
        return f"; the last good state is {latest}" if latest is not None else ""

