"""Backbone stems (deeplab2 ``stems.py``). None has a max-pool: the next block is strided."""

from __future__ import annotations

from torch import nn

from cmt_deeplab.models.layers.norm_act import ConvBN


def build_stem(
    stem_type: str, width_multiplier: float = 1.0, activation: str = "relu"
) -> tuple[nn.Module, int]:
    """Returns ``(stem, out_channels)``; the output is at stride 2 and not activated.

    - ``resnet``: 7x7/2 conv 3->64 + BN (deeplab2 "ResNet-50").
    - ``resnet_beta``: Inception stem, 3x3/2 64 -> 3x3 64 -> 3x3 128 (MaX-S, Axial-R50, CMT).
    - ``wider_resnet``: 3x3/2 conv 3->64 + BN (MaX-L).
    """
    width = int(round(64 * width_multiplier))
    if stem_type == "resnet":
        return ConvBN(3, width, 7, stride=2), width
    if stem_type == "wider_resnet":
        return ConvBN(3, width, 3, stride=2), width
    if stem_type == "resnet_beta":
        wide = int(128 * width_multiplier)
        stem = nn.Sequential(
            ConvBN(3, int(64 * width_multiplier), 3, stride=2, activation=activation),
            ConvBN(int(64 * width_multiplier), int(64 * width_multiplier), 3, activation=activation),
            ConvBN(int(64 * width_multiplier), wide, 3),
        )
        return stem, wide
    raise ValueError(f"unknown stem {stem_type!r}; expected resnet, resnet_beta or wider_resnet")
