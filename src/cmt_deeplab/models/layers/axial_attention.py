"""Position-sensitive axial attention (Axial-DeepLab), as deeplab2 implements it.

One axis: the input ``[B', L, C]`` (B' folds the batch and the other axis) is projected to
queries, keys (``K`` channels each) and values (``V``), split into heads. Logits are the sum
of three terms, each with its own BN per head:

    content  q_o . k_p,      query-RPE  q_o . E_q[p - o],      key-RPE  k_p . E_k[p - o]

and the output sums the retrieved content ``sum_p a_op v_p`` and the retrieved positional
values ``sum_p a_op E_v[p - o]``, each with its own BN per channel. The relative tables have
``2 * 255 - 1 = 509`` rows whatever the input size (deeplab2's ``MAX_SPAN``); for axes longer
than 255 the distance is clipped, sharing the outermost embedding.

The positional terms are batched matmuls over the query position (batch = L), not einsums
against the gathered ``[L, L, d]`` table: that keeps them GEMM-bound at large L
(see ``shared/design/performance_notes.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.layers.init import trunc_normal_
from cmt_deeplab.models.layers.norm_act import BN_EPS, BN_MOMENTUM

MAX_SPAN = 255


def relative_index(length: int, device: torch.device | None = None) -> torch.Tensor:
    """``[L, L]`` rows of the relative table for query o and key p: ``p - o + MAX_SPAN - 1``."""
    positions = torch.arange(length, device=device)
    index = positions[None, :] - positions[:, None] + MAX_SPAN - 1
    return index.clamp_(0, 2 * MAX_SPAN - 2)


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class AxialAttention(nn.Module):
    """Global position-sensitive self-attention along one axis: ``[B', L, C] -> [B', L, V]``."""

    def __init__(
        self, in_channels: int, key_channels: int, value_channels: int, num_heads: int = 8
    ) -> None:
        super().__init__()
        if key_channels % num_heads or value_channels % num_heads:
            raise ValueError(
                f"key ({key_channels}) and value ({value_channels}) channels must be divisible "
                f"by the number of heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.key_channels = key_channels
        self.value_channels = value_channels
        qkv = 2 * key_channels + value_channels
        self.qkv = nn.Linear(in_channels, qkv, bias=False)
        trunc_normal_(self.qkv.weight, in_channels**-0.5)
        self.qkv_bn = _bn(qkv)
        dk, dv = key_channels // num_heads, value_channels // num_heads
        self.query_rpe = nn.Parameter(trunc_normal_(torch.empty(2 * MAX_SPAN - 1, dk), 1.0))
        self.key_rpe = nn.Parameter(trunc_normal_(torch.empty(2 * MAX_SPAN - 1, dk), 1.0))
        self.value_rpe = nn.Parameter(trunc_normal_(torch.empty(2 * MAX_SPAN - 1, dv), 1.0))
        # One (gamma, beta) per (term, head) on the logits; per (term, channel) on the output.
        self.similarity_bn = _bn(3 * num_heads)
        self.output_bn = _bn(2 * value_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.similarity_bn.running_var is not None:
            return self._forward_folded(x)
        batch, length, _ = x.shape
        heads = self.num_heads
        dk, dv = self.key_channels // heads, self.value_channels // heads
        qkv = self.qkv_bn(self.qkv(x).reshape(batch * length, -1)).reshape(batch, length, -1)
        q, k, v = qkv.split([self.key_channels, self.key_channels, self.value_channels], dim=-1)
        q = q.reshape(batch, length, heads, dk).transpose(1, 2)  # [B', h, L, dk]
        k = k.reshape(batch, length, heads, dk).transpose(1, 2)
        v = v.reshape(batch, length, heads, dv).transpose(1, 2)  # [B', h, L, dv]

        index = relative_index(length, x.device)
        rpe_q = self.query_rpe[index]  # [L(o), L(p), dk]
        rpe_k = self.key_rpe[index]
        rpe_v = self.value_rpe[index]  # [L(o), L(p), dv]

        content = q @ k.transpose(-1, -2)  # [B', h, L, L]
        # q_o . E_q[o, p]: batch over o -> [L(o), B'h, dk] @ [L(o), dk, L(p)].
        q_by_pos = q.permute(2, 0, 1, 3).reshape(length, batch * heads, dk)
        query_term = (q_by_pos @ rpe_q.transpose(1, 2)).reshape(length, batch, heads, length)
        query_term = query_term.permute(1, 2, 0, 3)
        # k_p . E_k[o, p]: batch over p -> [L(p), B'h, dk] @ [L(p), dk, L(o)].
        k_by_pos = k.permute(2, 0, 1, 3).reshape(length, batch * heads, dk)
        key_term = (k_by_pos @ rpe_k.permute(1, 2, 0)).reshape(length, batch, heads, length)
        key_term = key_term.permute(1, 2, 3, 0)

        logits = torch.stack([content, query_term, key_term], dim=1)  # [B', 3, h, L, L]
        logits = self.similarity_bn(logits.reshape(batch, 3 * heads, length * length))
        logits = logits.reshape(batch, 3, heads, length, length).sum(dim=1)
        weights = logits.softmax(dim=-1)  # [B', h, L(o), L(p)]

        retrieved_content = weights @ v  # [B', h, L, dv]
        w_by_pos = weights.permute(2, 0, 1, 3).reshape(length, batch * heads, length)
        retrieved_rpe = (w_by_pos @ rpe_v).reshape(length, batch, heads, dv).permute(1, 2, 0, 3)
        out = torch.stack([retrieved_content, retrieved_rpe], dim=1)  # [B', 2, h, L, dv]
        out = out.permute(0, 1, 2, 4, 3).reshape(batch, 2 * self.value_channels, length)
        out = self.output_bn(out).reshape(batch, 2, heads, dv, length).sum(dim=1)
        return out.reshape(batch, self.value_channels, length).transpose(1, 2)  # [B', L, V]

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """Eval mode: every BN is an affine map, folded where it costs nothing.

        The qkv BN goes into the projection; the per-(term, head) logit scales go into q and
        k before the matmuls, and their shifts are dropped (constant over the keys, they
        cancel in the softmax); the output BN becomes a scale per term and one shift. The
        three logit terms are accumulated in place instead of stacked.
        """
        batch, length, _ = x.shape
        heads, key, value = self.num_heads, self.key_channels, self.value_channels
        dk, dv = key // heads, value // heads
        scale, shift = _bn_affine(self.qkv_bn)
        qkv = F.linear(x, self.qkv.weight * scale[:, None], shift)  # [B', L, 2K+V]
        q, k, v = qkv.split([key, key, value], dim=-1)
        q = q.reshape(batch, length, heads, dk)
        k = k.reshape(batch, length, heads, dk)
        v = v.reshape(batch, length, heads, dv).transpose(1, 2)  # [B', h, L, dv]
        term_scale = _bn_affine(self.similarity_bn)[0].reshape(3, heads, 1)
        index = relative_index(length, x.device)

        logits = (q * term_scale[0]).transpose(1, 2) @ k.permute(0, 2, 3, 1)  # [B', h, L, L]
        q_by_pos = (q * term_scale[1]).transpose(0, 1).reshape(length, batch * heads, dk)
        query_term = q_by_pos @ self.query_rpe[index].transpose(1, 2)  # [L(o), B'h, L(p)]
        logits += query_term.reshape(length, batch, heads, length).permute(1, 2, 0, 3)
        k_by_pos = (k * term_scale[2]).transpose(0, 1).reshape(length, batch * heads, dk)
        key_term = k_by_pos @ self.key_rpe[index].permute(1, 2, 0)  # [L(p), B'h, L(o)]
        logits += key_term.reshape(length, batch, heads, length).permute(1, 2, 3, 0)
        weights = logits.softmax(dim=-1)  # [B', h, L(o), L(p)]

        out_scale, out_shift = _bn_affine(self.output_bn)
        content_scale = out_scale[:value].reshape(heads, 1, dv)
        rpe_scale = out_scale[value:].reshape(heads, 1, dv)
        out = (weights @ v) * content_scale  # [B', h, L, dv]
        w_by_pos = weights.permute(2, 0, 1, 3).reshape(length, batch * heads, length)
        retrieved_rpe = (w_by_pos @ self.value_rpe[index]).reshape(length, batch, heads, dv)
        out += retrieved_rpe.permute(1, 2, 0, 3) * rpe_scale
        out = out.transpose(1, 2).reshape(batch, length, value)
        return out + (out_shift[:value] + out_shift[value:])


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``scale * x + shift`` per channel."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class AxialAttention2D(nn.Module):
    """Height-axis then width-axis attention: ``[B, C, H, W] -> [B, V, H/s, W/s]``.

    A stride subsamples rows after the height axis and columns after the width axis.
    """

    def __init__(
        self,
        in_channels: int,
        filters: int,
        stride: int = 1,
        key_expansion: float = 1.0,
        value_expansion: float = 2.0,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        key_channels = int(round(filters * key_expansion))
        self.value_channels = int(round(filters * value_expansion))
        self.stride = stride
        self.height_axis = AxialAttention(in_channels, key_channels, self.value_channels, num_heads)
        self.width_axis = AxialAttention(
            self.value_channels, key_channels, self.value_channels, num_heads
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        y = x.permute(0, 3, 2, 1).reshape(batch * width, height, channels)
        y = self.height_axis(y).reshape(batch, width, height, self.value_channels)
        if self.stride > 1:
            y = y[:, :, :: self.stride]
            height = y.shape[2]
        y = y.transpose(1, 2).reshape(batch * height, width, self.value_channels)
        y = self.width_axis(y).reshape(batch, height, width, self.value_channels)
        if self.stride > 1:
            y = y[:, :, :: self.stride]
        return y.permute(0, 3, 1, 2).contiguous()

