"""``run.time_limit_s``: stop a run in time, and with ``run.fit_time_limit`` end its schedule
with the time instead of cutting it off at a high learning rate.

Every ``REPLAN_EVERY`` steps the plan is remade from the speed so far (evaluations and saves
included): the run's total steps, and the poly schedule's end with it, become what
``FIT_SHARE`` of the limit allows, never more than ``run.steps``. The rest of the limit absorbs
the final evaluation and save and speed changes after the last plan. Every rank takes rank 0's
plan and rank 0's decision that the time is up.
"""

from __future__ import annotations

import time

import torch

from cmt_deeplab.engine.distributed import DistributedContext

#: Steps between re-plans of ``run.fit_time_limit``, and the share of the time limit planned.
REPLAN_EVERY = 50
FIT_SHARE = 0.95


class TimeBudget:
    """The time limit of one invocation (0: none), started by ``start``.

    Args:
        limit_s: ``run.time_limit_s``.
        fit: ``run.fit_time_limit``: shorten the plan (``replan``) to end with the time.
        dist, device: every rank follows rank 0.
    """

    def __init__(
        self, limit_s: float, fit: bool, dist: DistributedContext, device: torch.device
    ) -> None:
        self.limit_s = limit_s
        self.fit = fit
        self.dist = dist
        self.device = device
        self.start_step = 0
        self.start_time = time.perf_counter()

    def start(self, step: int) -> None:
        """The clock starts now, at optimizer step ``step`` (a resumed run's first)."""
        self.start_step, self.start_time = step, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    def replan_due(self, step: int) -> bool:
        return bool(self.fit and self.limit_s and step % REPLAN_EVERY == 0)

    def plan(self, step: int, max_steps: int) -> int:
        """The total steps that fit in the time left at the speed so far (<= ``max_steps``)."""
        elapsed = self.elapsed()
        per_step = elapsed / max(step - self.start_step, 1)
        left = FIT_SHARE * self.limit_s - elapsed
        total = min(max_steps, step + max(int(left / per_step), 0))
        if self.dist.enabled:  # every rank takes rank 0's plan
            plan = torch.tensor([float(total)], device=self.device)
            torch.distributed.broadcast(plan, src=0)
            total = int(plan.item())
        return total

    def is_up(self) -> bool:
        """Whether the limit has passed (never without a limit); rank 0 decides."""
        if not self.limit_s:
            return False
        up = self.elapsed() >= self.limit_s
        if self.dist.enabled:
            flag = torch.tensor([float(up)], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            up = bool(flag.item())
        return up
