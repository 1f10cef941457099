"""Wrapping the model for ``DistributedDataParallel``, and the probe DDP needs first.

DDP must be told ``find_unused_parameters=True`` exactly when some trainable parameter gets
no gradient from the loss (e.g. the semantic head when its weight is 0); one small random
step finds them before wrapping. On CUDA the BNs become ``SyncBatchNorm`` (deeplab2 trains
with synchronized BN); torch syncs BN on accelerators only, so on CPU (gloo) each process
normalises with its own batch statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.data.random_batch import random_batch
from cmt_deeplab.losses.criterion import PanopticCriterion


def wrap_distributed(
    model: nn.Module, criterion: PanopticCriterion, num_thing_classes: int,
    device: torch.device,
) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (with ``SyncBatchNorm`` on CUDA)."""
    from torch.nn.parallel import DistributedDataParallel

    unused = unused_parameters(model, criterion, num_thing_classes, device)
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index],
                                       find_unused_parameters=bool(unused))
    return DistributedDataParallel(model, find_unused_parameters=bool(unused))


def unused_parameters(
    model: nn.Module, criterion: PanopticCriterion, num_thing_classes: int,
    device: torch.device,
) -> list[str]:
    """Trainable parameters that get no gradient from the loss, found with one small random
    step; the model state, its gradients and the global torch RNG are left unchanged."""
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    images, targets = random_batch(2, (65, 65), criterion.num_classes, num_thing_classes)
    generator, criterion.generator = criterion.generator, None
    try:
        criterion(model(images.to(device)), targets)["loss"].backward()
    finally:
        criterion.generator = generator
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    torch.set_rng_state(rng)
    return unused
