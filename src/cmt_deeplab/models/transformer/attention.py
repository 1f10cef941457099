"""Multi-head attention with BN on the logits and on the retrieved values (deeplab2's
``AttentionOperation``), shared by the MaX dual-path layer and the CMT layer."""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.models.layers.norm_act import BN_EPS, BN_MOMENTUM, get_activation


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, L, C] -> [B, h, L, C/h]``."""
    batch, length, channels = x.shape
    return x.reshape(batch, length, num_heads, channels // num_heads).transpose(1, 2)


class AttentionOperation(nn.Module):
    """``softmax(BN_h(q k^T)) v`` then BN per channel and activation.

    Shapes: q ``[B, h, N, dk]``, k ``[B, h, L, dk]``, v ``[B, h, L, dv]`` -> ``[B, N, h*dv]``;
    with ``return_weights`` also the attention ``[B, h, N, L]``.
    """

    def __init__(self, num_heads: int, value_channels: int, activation: str = "relu") -> None:
        super().__init__()
        self.similarity_bn = nn.BatchNorm2d(num_heads, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.value_bn = nn.BatchNorm1d(value_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = get_activation(activation)
        # Set by ``inference.fast.optimize_for_inference`` on an eval-only copy: the logit BN
        # becomes a per-head scale on q; its shift, constant over the keys, cancels in the
        # softmax. Saves a pass over the [B, h, N, L] logits.
        self.fused_inference = False

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.fused_inference:
            bn = self.similarity_bn
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # [h]
            weights = ((q * scale[:, None, None]) @ k.transpose(-1, -2)).softmax(dim=-1)
        else:
            weights = self.similarity_bn(q @ k.transpose(-1, -2)).softmax(dim=-1)
        retrieved = weights @ v  # [B, h, N, dv]
        batch, heads, length, dv = retrieved.shape
        retrieved = retrieved.transpose(1, 2).reshape(batch * length, heads * dv)
        retrieved = self.act(self.value_bn(retrieved)).reshape(batch, length, heads * dv)
        return retrieved, (weights if return_weights else None)
