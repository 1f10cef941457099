"""deeplab2 trains with synchronised BN across replicas; this converts a model for DDP."""

from __future__ import annotations

from torch import nn


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm*d`` -> ``SyncBatchNorm`` with the same eps, momentum and state.

    Our memory-path BNs see ``[B*N, C]`` tensors, which ``SyncBatchNorm`` accepts as well.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
