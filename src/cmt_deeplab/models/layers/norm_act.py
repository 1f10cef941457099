"""Convolution / projection + BatchNorm + activation, with deeplab2's numerics.

deeplab2 trains with synchronised BN, TF momentum 0.99 (= torch ``momentum=0.01``) and
``eps=1e-3``; convolutions followed by BN carry no bias. The last BN of every residual
branch starts at gamma = 0 so that each block begins as the identity (``zero_init``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.layers.init import he_normal_

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def get_activation(name: str) -> nn.Module:
    """``relu`` (MaX-DeepLab, CMT-DeepLab), ``gelu`` (kMaX) or ``identity``."""
    name = name.lower()
    if name == "relu":
        return nn.ReLU(inplace=False)
    if name == "gelu":
        return nn.GELU()
    if name in ("none", "identity"):
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected relu, gelu or none")


def batch_norm(channels: int, zero_init: bool = False, gamma: float = 1.0) -> nn.BatchNorm2d:
    """A BN whose weight starts at 0 (end of a residual branch) or at ``gamma``."""
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    nn.init.constant_(bn.weight, 0.0 if zero_init else gamma)
    nn.init.zeros_(bn.bias)
    return bn


class ConvBN(nn.Sequential):
    """``Conv2d`` ("SAME" padding, no bias) + BN + optional activation. ``[B, C, H, W]``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        activation: str = "none",
        zero_init: bool = False,
    ) -> None:
        # deeplab2 pads symmetrically with rate*(k-1)//2: equal to torch's padding for odd k.
        padding = dilation * (kernel_size - 1) // 2
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False
        )
        he_normal_(conv.weight)
        super().__init__(conv, batch_norm(out_channels, zero_init), get_activation(activation))


class LinearBN(nn.Module):
    """deeplab2's ``Conv1D`` on the memory path: ``[B, N, C_in] -> [B, N, C_out]``.

    A bias-free linear map followed by BN over the channel axis, with statistics over batch
    and slots (TF ``BatchNormalization(axis=-1)`` on a rank-3 tensor), then an activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        activation: str = "none",
        zero_init: bool = False,
        std: float | None = None,
        use_bn: bool = True,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=not use_bn)
        if std is None:
            he_normal_(self.linear.weight)
        else:
            nn.init.trunc_normal_(self.linear.weight, std=std, a=-2 * std, b=2 * std)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.bn = nn.BatchNorm1d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM) if use_bn else None
        if self.bn is not None:
            nn.init.constant_(self.bn.weight, 0.0 if zero_init else 1.0)
            nn.init.zeros_(self.bn.bias)
        self.act = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.bn is not None:
            x = bn_last_dim(x, self.bn)
        return self.act(x)


def bn_last_dim(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Applies a ``BatchNorm1d`` to the last axis of ``x`` (any leading shape)."""
    shape = x.shape
    return bn(x.reshape(-1, shape[-1])).reshape(shape)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of ``[B, C, H, W]`` (kMaX normalises backbone skips so)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        ).permute(0, 3, 1, 2)
