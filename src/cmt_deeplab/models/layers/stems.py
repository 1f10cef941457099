"""Backbone stems (deeplab2 ``stems.py``). None has a max-pool: the next block is strided.

Each is ``stem(width_multiplier, activation) -> (module, out_channels)``; the output is at
stride 2 and not activated. A backbone module picks its stem (``backbones/registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cmt_deeplab.models.layers.norm_act import ConvBN

#: ``stem(width_multiplier, activation) -> (module, out_channels)``
StemFactory = Callable[[float, str], tuple[nn.Module, int]]


def resnet_stem(width_multiplier: float = 1.0, activation: str = "relu") -> tuple[nn.Module, int]:
    """7x7/2 conv 3->64 + BN (deeplab2 "ResNet-50")."""
    return _single_conv_stem(7, width_multiplier)


def wide_resnet_stem(
    width_multiplier: float = 1.0, activation: str = "relu"
) -> tuple[nn.Module, int]:
    """3x3/2 conv 3->64 + BN (MaX-DeepLab-L's wide-ResNet)."""
    return _single_conv_stem(3, width_multiplier)


def _single_conv_stem(kernel_size: int, width_multiplier: float) -> tuple[nn.Module, int]:
    # One conv + BN, not activated: the next block activates its input.
    width = int(round(64 * width_multiplier))
    return ConvBN(3, width, kernel_size, stride=2), width


def inception_stem(
    width_multiplier: float = 1.0, activation: str = "relu"
) -> tuple[nn.Module, int]:
    """Inception stem 3x3/2 64 -> 3x3 64 -> 3x3 128 (ResNet-beta: MaX-S, Axial-R50, CMT)."""
    narrow, wide = int(64 * width_multiplier), int(128 * width_multiplier)
    stem = nn.Sequential(
        ConvBN(3, narrow, 3, stride=2, activation=activation),
        ConvBN(narrow, narrow, 3, activation=activation),
        ConvBN(narrow, wide, 3),
    )
    return stem, wide
