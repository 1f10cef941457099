"""Optimizer and learning-rate schedule, as deeplab2's trainer builds them (fact sheet §7).

- AdamW with weight decay on convolution / linear *kernels* only (deeplab2 includes
  ``.*(kernel|weight):0$`` and excludes everything else: BN / LayerNorm affine terms, biases,
  relative-position tables and the slot table get none); or Adam without decay (MaX-DeepLab).
- Pretrained parameters under a ``backbone.`` module train at ``lr x backbone_lr_multiplier``
  (deeplab2 slows the pretrained weights only: encoder tensors a pretrained start did not
  fill, and every tensor of a run from scratch, train at the base lr).
- Linear warm-up from 0 over ``warmup_steps``, then poly decay over the *whole* run (deeplab2
  wraps ``PolynomialDecay(decay_steps=total)`` in ``WarmUp``, so after the warm-up the lr
  continues on the poly curve, it does not restart it).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cmt_deeplab.engine.config import OptimizerSection, ScheduleSection

#: Modules whose ``weight`` is a kernel that gets weight decay.
_KERNEL_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def is_backbone_parameter(name: str) -> bool:
    """``backbone.*``, also inside a wrapper or a recursive net (``net1.backbone.*``)."""
    return name.startswith("backbone.") or ".backbone." in name


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, backbone_lr_multiplier: float,
    pretrained: Collection[str] = (),
) -> list[dict]:
    """Groups by (backbone or not, pretrained backbone or not, decayed kernel or not), each
    with its ``lr``; ``pretrained`` names the parameters a pretrained start loaded.

    Every group carries ``name`` for logging; empty groups are left out.
    """
    pretrained = set(pretrained)
    kernels = {
        id(module.weight)
        for module in model.modules()
        if isinstance(module, _KERNEL_MODULES) and isinstance(module.weight, nn.Parameter)
    }
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        backbone = is_backbone_parameter(name)
        key = (backbone, backbone and name in pretrained, id(param) in kernels)
        groups.setdefault(key, []).append(param)
    result = []
    for (backbone, slowed, decay), params in sorted(groups.items()):
        part = "pretrained_backbone" if slowed else "backbone" if backbone else "head"
        result.append({
            "params": params,
            "lr": lr * (backbone_lr_multiplier if slowed else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{part}_{'decay' if decay else 'no_decay'}",
        })
    return result


def build_optimizer(
    model: nn.Module, config: OptimizerSection, pretrained: Collection[str] = ()
) -> torch.optim.Optimizer:
    """AdamW (decoupled decay on kernels) or Adam (no decay), over ``parameter_groups``."""
    weight_decay = config.weight_decay if config.name == "adamw" else 0.0
    groups = parameter_groups(model, config.lr, weight_decay, config.backbone_lr_multiplier,
                              pretrained)
    betas = (float(config.betas[0]), float(config.betas[1]))
    # The fused kernels update every tensor in one pass (CPU and CUDA); the per-tensor
    # loop they replace cost ~10% of a tiny-model CPU training step.
    fused = _fused_supported(model)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=config.eps,
                                 fused=fused)
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=betas, eps=config.eps, fused=fused)
    raise ValueError(f"unknown optimizer {config.name!r}; choose adamw or adam")


def _fused_supported(model: nn.Module) -> bool | None:
    """True where torch has fused Adam(W) kernels for every parameter (float, CPU or CUDA)."""
    params = list(model.parameters())
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                              for p in params)
    return True if ok and len({p.device for p in params}) == 1 else None


def poly_lr_factor(
    step: int, total_steps: int, warmup_steps: int = 0, power: float = 0.9,
    end_factor: float = 0.0,
) -> float:
    """Multiplier of the base lr for the update after ``step`` updates.

    ``step / warmup_steps`` during the warm-up, else
    ``(1 - end) * (1 - step / total) ** power + end`` (0 from ``total`` on).
    """
    if step < warmup_steps:
        return step / warmup_steps
    progress = min(step, total_steps) / max(total_steps, 1)
    return (1.0 - end_factor) * (1.0 - progress) ** power + end_factor


@dataclass
class PolyWarmupSchedule:
    """``LambdaLR`` multiplier (a callable object, so its numbers go into the state dict)."""

    total_steps: int
    warmup_steps: int = 0
    power: float = 0.9
    end_factor: float = 0.0

    def __call__(self, step: int) -> float:
        return poly_lr_factor(step, self.total_steps, self.warmup_steps, self.power,
                              self.end_factor)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleSection, total_steps: int,
    last_step: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Step it once per optimizer update; update ``k`` (from 0) uses ``lr x factor(k)``.

    ``last_step`` > 0 continues a run after that many updates (torch's ``last_epoch``
    resume): every group's lr is set for update ``last_step`` from its ``initial_lr``.
    """
    schedule = PolyWarmupSchedule(total_steps, config.warmup_steps, config.power,
                                  config.end_lr_factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=last_step - 1)


def resume_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleSection, total_steps: int,
    saved: Mapping[str, Any],
) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule of ``config`` continued at the position of a saved scheduler state.

    The current config owns the curve (a longer run stretches the poly decay) and the base
    lrs (each group's ``initial_lr``, set before); the saved state owns the position. With an
    unchanged config both agree to the bit, so an exact resume stays exact, and the state
    dict equals an uninterrupted run's (its count of ``step`` calls included).
    """
    scheduler = build_scheduler(optimizer, config, total_steps, last_step=int(saved["last_epoch"]))
    scheduler.load_state_dict({**scheduler.state_dict(), "_step_count": saved["_step_count"]})
    return scheduler


def set_schedule_end(scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int) -> None:
    """Moves the end of the poly decay to ``total_steps`` (``run.fit_time_limit``)."""
    for schedule in scheduler.lr_lambdas:
        schedule.total_steps = total_steps
