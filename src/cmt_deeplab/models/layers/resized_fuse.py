"""deeplab2 ``ResizedFuse``: bring several features to one size and width, then sum."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.layers.norm_act import ConvBN, get_activation


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (deeplab2's convention); no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ResizedFuse(nn.Module):
    """Sums inputs after bringing each to ``out_channels`` at the target size.

    An input that already has ``out_channels`` is only resized. Any other input is activated
    and passed through a 1x1 conv + BN: with stride 2 when it is exactly twice the target
    size, else at its own resolution followed by a resize (cheaper for upsampling).
    Whether an input is strided is decided from its size at run time; the weights are the same.
    """

    def __init__(self, in_channels: list[int], out_channels: int, activation: str = "relu") -> None:
        super().__init__()
        self.out_channels = out_channels
        self.act = get_activation(activation)
        self.convs = nn.ModuleList(
            [ConvBN(c, out_channels, 1) if c != out_channels else nn.Identity() for c in in_channels]
        )

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        if len(features) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} inputs, got {len(features)}")
        total = None
        for feature, conv in zip(features, self.convs, strict=True):
            if not isinstance(conv, nn.Identity):
                feature = self.act(feature)
                height, width = feature.shape[-2:]
                if (height + 1) // 2 == size[0] and (width + 1) // 2 == size[1]:
                    conv_layer, bn = conv[0], conv[1]
                    feature = bn(F.conv2d(feature, conv_layer.weight, conv_layer.bias, stride=2))
                else:
                    feature = conv(feature)
            feature = resize_bilinear(feature, size)
            total = feature if total is None else total + feature
        return total
