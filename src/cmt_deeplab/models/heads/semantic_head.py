"""Auxiliary semantic branch (training only): Panoptic-DeepLab's single decoder + head.

ASPP (256 ch, rates 6/12/18, image pooling, 1x1 projection, dropout 0.1) on the stride-16
feature; fused with res3 (projected to 64 ch) and res2 (32 ch), each fusion a 5x5
depthwise-separable conv to 256; head: 5x5 depthwise-separable 256 then 1x1 to the classes.
deeplab2 excludes it from parameter counts (15,856,742 for COCO with 134 outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.layers.init import trunc_normal_
from cmt_deeplab.models.layers.norm_act import ConvBN, get_activation
from cmt_deeplab.models.layers.recompute import run_module
from cmt_deeplab.models.layers.resized_fuse import resize_bilinear


class SeparableConvBN(nn.Sequential):
    """Depthwise kxk + BN + act, then pointwise 1x1 + BN + act."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, activation: str) -> None:
        super().__init__(
            ConvBN(in_channels, in_channels, kernel, groups=in_channels, activation=activation),
            ConvBN(in_channels, out_channels, 1, activation=activation),
        )


class ASPP(nn.Module):
    def __init__(
        self, in_channels: int, channels: int = 256, rates: tuple[int, ...] = (6, 12, 18),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBN(in_channels, channels, 1, activation=activation)]
            + [ConvBN(in_channels, channels, 3, dilation=r, activation=activation) for r in rates]
        )
        self.pool = ConvBN(in_channels, channels, 1, activation=activation)
        self.project = ConvBN(channels * (len(rates) + 2), channels, 1, activation=activation)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [_atrous_branch(branch, x) for branch in self.branches]
        conv, bn, act = self.pool
        # BN after broadcasting: the same statistics as on the pooled vector, and a batch of
        # one still trains (one value per channel would make torch's BN refuse).
        pooled = conv(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        outs.append(act(bn(pooled)))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


def _atrous_branch(branch: ConvBN, x: torch.Tensor) -> torch.Tensor:
    """``branch(x)``; where the rate is at least the feature size (small crops: rates 12 and 18
    on a 97px crop's 7x7 map, all three on a 96px crop's 6x6), every off-centre tap reads zero
    padding, so the centre tap alone gives the same output and gradients at 1/9 of the cost."""
    conv, bn, act = branch
    rate = conv.dilation[0]
    if rate > 1 and rate >= max(x.shape[-2:]):
        centre = conv.kernel_size[0] // 2
        # conv.bias: None, or the BN shift after inference-time folding.
        kernel = conv.weight[:, :, centre:centre + 1, centre:centre + 1]
        return act(bn(F.conv2d(x, kernel, conv.bias)))
    return branch(x)


class SemanticHead(nn.Module):
    """``(res5 [B, C5, h16, w16], res3, res2) -> semantic_logits [B, K, h4, w4]``."""

    def __init__(
        self,
        num_classes: int,
        high_channels: int = 2048,
        low_channels: tuple[int, int] = (512, 256),
        projections: tuple[int, int] = (64, 32),
        channels: int = 256,
        activation: str = "relu",
        use_decoder: bool = True,
    ) -> None:
        super().__init__()
        self.use_decoder = use_decoder
        if not use_decoder:
            low_channels, projections, channels = (), (), high_channels
        else:
            self.aspp = ASPP(high_channels, channels, activation=activation)
        self.low_projections = nn.ModuleList(
            [ConvBN(c, p, 1, activation=activation) for c, p in zip(low_channels, projections, strict=True)]
        )
        self.fusions = nn.ModuleList(
            [SeparableConvBN(channels + p, channels, 5, activation) for p in projections]
        )
        self.head = SeparableConvBN(channels, channels, 5, activation)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        trunc_normal_(self.classifier.weight, 0.01)
        nn.init.zeros_(self.classifier.bias)
        self.act = get_activation(activation)
        self.recompute = "none"  # set_recompute: "blocks" recomputes the head in backward

    def forward(self, high: torch.Tensor, lows: list[torch.Tensor]) -> torch.Tensor:
        return run_module(self, self._forward, high, lows, mode=self.recompute)

    def _forward(self, high: torch.Tensor, lows: list[torch.Tensor]) -> torch.Tensor:
        x = self.aspp(high) if self.use_decoder else high
        for low, project, fuse in zip(lows, self.low_projections, self.fusions, strict=True):
            x = resize_bilinear(x, tuple(low.shape[-2:]))
            x = fuse(torch.cat([x, project(low)], dim=1))
        return self.classifier(self.head(x))

