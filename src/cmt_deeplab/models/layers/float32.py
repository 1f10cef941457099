"""Float32 parts of a model that runs under ``torch.autocast`` (bf16 / fp16 inference).

A module whose class sets ``keep_float32 = True`` computes in float32 inside an autocast
region: its forward enters ``float32_region`` and casts its inputs up (``upcast``).
Low-precision inference copies (``inference.fast.cast_layer_weights``) leave its layers'
weights in float32. Outside
autocast both are no-ops, so float32 runs are unchanged bit for bit.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch
from torch import nn

#: The class attribute that marks a module as computed in float32 under autocast.
KEEP_FLOAT32 = "keep_float32"


def float32_region(tensor: torch.Tensor) -> AbstractContextManager[None]:
    """Autocast switched off on ``tensor``'s device where it is on; else nothing.

    Nothing at all outside autocast: no autocast context in traced or exported graphs, and
    devices without autocast (``meta``, used to count MACs) need none.
    """
    device = tensor.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is a float of fewer bits (bf16, fp16); else itself (a
    float64 reference run stays float64)."""
    if tensor.is_floating_point() and tensor.dtype.itemsize < 4:
        return tensor.float()
    return tensor


def float32_modules(model: nn.Module) -> set[nn.Module]:
    """Every module of ``model`` inside (or being) a ``keep_float32`` module."""
    return {inner for module in model.modules() if getattr(module, KEEP_FLOAT32, False)
            for inner in module.modules()}
