"""Residual blocks of the Axial-ResNet family (deeplab2 ``AxialBlock``).

Every block takes a *non-activated* tensor, activates it on entry, and returns the
non-activated sum ``branch + shortcut``. The shortcut is the activated input, through a
1x1 conv + BN (with the block's stride) when the channel count changes, else the identity
(subsampled when strided). The stride sits in the first spatial op ("ResNet v1.5").

Three branch types:
- ``bottleneck``: 1x1 -> 3x3 (stride, atrous) -> 1x1 (x4), convolutional;
- ``axial``: 1x1 (x expansion) -> axial attention (height then width) -> act -> 1x1 (x4);
- ``basic``: 3x3 -> 3x3 (wide-ResNet stages of MaX-DeepLab-L).
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.models.layers.axial_attention import AxialAttention2D
from cmt_deeplab.models.layers.drop_path import DropPath
from cmt_deeplab.models.layers.norm_act import ConvBN, get_activation


class ResidualBlock(nn.Module):
    """One residual block: ``[B, C_in, H, W] -> [B, C_out, H/s, W/s]`` (non-activated)."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        block_type: str = "bottleneck",
        stride: int = 1,
        atrous_rate: int = 1,
        second_atrous_rate: int | None = None,
        drop_path_keep_prob: float = 1.0,
        activation: str = "relu",
        attention_bottleneck_expansion: int = 2,
        key_expansion: float = 1.0,
        value_expansion: float = 2.0,
        num_heads: int = 8,
        wide_basic_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.block_type = block_type
        self.act = get_activation(activation)
        if block_type == "bottleneck":
            out_channels = 4 * filters
            self.branch = nn.Sequential(
                ConvBN(in_channels, filters, 1, activation=activation),
                ConvBN(filters, filters, 3, stride, atrous_rate, activation=activation),
                ConvBN(filters, out_channels, 1, zero_init=True),
            )
        elif block_type == "wide_bottleneck":
            # SWideRNet-style bottleneck (1x1 f, 3x3 2f, 1x1 4f) used beyond stride 32.
            out_channels = 4 * filters
            self.branch = nn.Sequential(
                ConvBN(in_channels, filters, 1, activation=activation),
                ConvBN(filters, 2 * filters, 3, stride, atrous_rate, activation=activation),
                ConvBN(2 * filters, out_channels, 1, zero_init=True),
            )
        elif block_type == "axial":
            out_channels = 4 * filters
            width = filters * attention_bottleneck_expansion
            attention = AxialAttention2D(
                width, filters, stride, key_expansion, value_expansion, num_heads
            )
            self.branch = nn.Sequential(
                ConvBN(in_channels, width, 1, activation=activation),
                attention,
                get_activation(activation),
                ConvBN(attention.value_channels, out_channels, 1, zero_init=True),
            )
        elif block_type == "basic":
            out_channels = wide_basic_channels or 4 * filters
            self.branch = nn.Sequential(
                ConvBN(in_channels, out_channels, 3, stride, atrous_rate, activation=activation),
                ConvBN(
                    out_channels, out_channels, 3, 1, second_atrous_rate or atrous_rate,
                    zero_init=True,
                ),
            )
        else:
            raise ValueError(
                f"unknown block type {block_type!r}; expected bottleneck, wide_bottleneck, "
                "axial or basic"
            )
        self.out_channels = out_channels
        self.stride = stride
        self.shortcut = (
            ConvBN(in_channels, out_channels, 1, stride) if in_channels != out_channels else None
        )
        self.drop_path = DropPath(drop_path_keep_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        if self.shortcut is not None:
            shortcut = self.shortcut(x)
        elif self.stride > 1:
            shortcut = x[:, :, :: self.stride, :: self.stride]
        else:
            shortcut = x
        return self.drop_path(self.branch(x)) + shortcut
