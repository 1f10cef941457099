"""Process-group setup under ``torchrun`` and the data sampler that can resume mid-epoch.

``torchrun --nproc_per_node N -m cmt_deeplab.cli.main train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; ``DistributedContext.from_env`` then joins the process
group (NCCL on CUDA, gloo on CPU). A plain run is a world of one, without a process group.
The same holds on several nodes (``--nnodes``, one agent a node): ranks are global, only
``LOCAL_RANK`` is per node.

When a worker dies, ``torchrun --max-restarts N`` restarts every worker of the job and counts
the restarts in ``TORCHELASTIC_RESTART_COUNT``; the count only moves on the node whose worker
failed (the other nodes restart for the membership change), hence ``restarted`` asks all ranks.

Restarts and torchrun's shared store: with the c10d rendezvous, torchrun (>= 2.5) hands every
attempt's workers the same key-value store (``TORCHELASTIC_USE_AGENT_STORE``), which keeps the
keys of the attempt before. A restarted rank can then read a dead rank's address and fail to
connect ("Gloo connectFullMesh failed ... Connection refused"; pytorch/pytorch#135712). On one
node every rank's ``TORCHELASTIC_RESTART_COUNT`` is the same, so the process group's keys get
that attempt's own prefix. Across nodes the count is not shared (it moves only on the node that
failed); there ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` makes torchrun start a fresh store
each attempt, and a multi-node run with restarts warns when it is not set.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def _attempt_store(world_size: int, restarts: int) -> dist.Store | None:
    """The process group's store for this restart attempt, or None for ``env://``'s own.

    Only under torchrun's shared store with restarts allowed: on one node, the shared store
    under a prefix of the attempt's number (see the module docstring).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) == 0:
        return None
    if int(os.environ.get("GROUP_WORLD_SIZE", "1")) > 1:
        if os.environ.get("RANK") == "0":
            warnings.warn(
                "torchrun --max-restarts on several nodes shares one store across restart "
                "attempts, and a restarted worker may read the keys of the attempt before "
                "(pytorch/pytorch#135712): export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on "
                "every node before torchrun", stacklevel=3)
        return None
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                           world_size, is_master=False)
    return dist.PrefixStore(f"cmt_deeplab/attempt_{restarts}", shared)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False
    restart_count: int = 0  # torchrun's restarts of this node's workers

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device_type: str) -> DistributedContext:
        """Joins the process group when ``WORLD_SIZE`` > 1 (``device_type`` picks the backend)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if world_size <= 1:
            return cls(restart_count=restarts)
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local_rank)
            store = _attempt_store(world_size, restarts)
            if store is None:
                dist.init_process_group(backend=backend)
            else:
                dist.init_process_group(backend=backend, store=store, rank=rank,
                                        world_size=world_size)
        return cls(rank, world_size, local_rank, True, restarts)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is set on any rank (every rank must call it)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def restarted(self, device: torch.device) -> bool:
        """Whether torchrun restarted this job's workers (on any node; every rank must call)."""
        return self.any_true(self.restart_count > 0, device)

    def mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each value averaged over the ranks (every rank must call, with the same keys)."""
        names = sorted(values)
        stacked = torch.stack([values[name].detach().float() for name in names])
        if self.enabled:
            dist.all_reduce(stacked)
            stacked /= self.world_size
        return dict(zip(names, stacked.tolist(), strict=True))

    def gather_objects(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def shutdown(self) -> None:
        if self.initialized and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized = False


def check_same_checkpoint(names: list[str | None], out_dir: Any) -> None:
    """Raises unless every rank found the same newest training state (``names[rank]``): on
    several nodes ``--out`` must be one directory that all of them share."""
    if len(set(names)) <= 1:
        return
    seen: dict[str | None, list[int]] = {}
    for rank, name in enumerate(names):
        seen.setdefault(name, []).append(rank)
    listing = "; ".join(f"rank(s) {', '.join(map(str, ranks[:8]))}{'...' if ranks[8:] else ''}: "
                        f"{name or 'none'}" for name, ranks in seen.items())
    raise ValueError(f"the processes see different newest training states in {out_dir} "
                     f"({listing}); on several nodes --out must be a directory every node "
                     "shares (a network file system), written by rank 0 and read by all")


def reshard_position(
    epoch: int, images_in_epoch: int, old_world_size: int, micro_batch: int, world_size: int
) -> tuple[int, int, str]:
    """Where a run saved by ``old_world_size`` processes continues with ``world_size``.

    ``ResumableSampler`` deals the epoch's permutation out round-robin, so the images all ranks
    have consumed are always a prefix of it: ``images_in_epoch`` of them. With ``world_size``
    processes of ``micro_batch`` images each the run continues at micro-batch
    ``images_in_epoch / (micro_batch x world_size)`` of the same epoch, which is exact whenever
    the global micro-batch (``run.batch_size / run.accumulate``) is unchanged; otherwise, if
    the prefix ends inside a micro-batch, at the start of the next epoch.

    Returns ``(epoch, batch_in_epoch, a note for the user)``.
    """
    per_micro_batch = micro_batch * world_size
    change = f"resuming a run of {old_world_size} process(es) with {world_size}"
    if images_in_epoch % per_micro_batch == 0:
        return epoch, images_in_epoch // per_micro_batch, (
            f"{change}: the sampler is re-sharded, the steps see the same images in the same "
            "order; per-process random streams (drop path, dropout, loss sampling) and per-process "
            "BatchNorm statistics differ from an uninterrupted run")
    return epoch + 1, 0, (
        f"{change}: {images_in_epoch} images of epoch {epoch} are consumed, not a whole number "
        f"of {per_micro_batch}-image micro-batches; continuing with epoch {epoch + 1}")


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``, this rank's share) that skips the
    first ``start`` indices of its epoch, so a resumed run continues the same data order."""

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Selects the epoch's order and skips its first ``start`` indices (of this rank)."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)
