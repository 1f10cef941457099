"""Initialisers matching deeplab2 (TensorFlow) so training starts from the same place."""

from __future__ import annotations

import math

import torch
from torch import nn

# TF's truncated normal cuts at 2 std; VarianceScaling divides by this constant so that
# the truncated distribution keeps the requested variance.
_TRUNCATION_CORRECTION = 0.87962566103423978


def trunc_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """Truncated normal at +-2 std, as ``tf.keras.initializers.TruncatedNormal``."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Keras ``he_normal``: truncated normal with variance 2 / fan_in."""
    fan_in = weight.shape[1] * math.prod(weight.shape[2:]) if weight.dim() > 1 else weight.shape[0]
    std = math.sqrt(2.0 / fan_in) / _TRUNCATION_CORRECTION
    return trunc_normal_(weight, std)
