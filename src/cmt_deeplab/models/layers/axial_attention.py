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

import functools

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.layers.init import trunc_normal_
from cmt_deeplab.models.layers.norm_act import BN_EPS, BN_MOMENTUM

MAX_SPAN = 255


def relative_index(length: int, device: torch.device | None = None) -> torch.Tensor:
    """``[L, L]`` rows of the relative table for query o and key p: ``p - o + MAX_SPAN - 1``.

    Cached per (length, device): every axial layer asks for it on every forward. Read-only.
    An export or ``torch.compile`` traces it afresh: the length may be symbolic there, and
    dynamo refuses to trace through the cache.
    """
    if torch.compiler.is_compiling():
        return _build_relative_index(length, device)
    return _relative_index(length, None if device is None else torch.device(device))


def _build_relative_index(length: int, device: torch.device | None) -> torch.Tensor:
    positions = torch.arange(length, device=device)
    index = positions[None, :] - positions[:, None] + MAX_SPAN - 1
    return index.clamp(0, 2 * MAX_SPAN - 2)


@functools.lru_cache(maxsize=64)
def _relative_index(length: int, device: torch.device | None) -> torch.Tensor:
    # A normal tensor even when first asked for under inference mode: a later training
    # forward saves it for the backward of the table lookup.
    with torch.inference_mode(False):
        return _build_relative_index(length, device)


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
        """``[B', L, C] -> [B', L, V]``."""
        batch, length, channels = x.shape
        # The 1x1 projection is pointwise: run it as a 1x1 convolution over a [C, B', L] map.
        grid = x.reshape(1, batch, length, channels).permute(0, 3, 1, 2)
        qkv = self.project_map(grid)  # [1, 2K+V, B', L]
        return self.attend(qkv[0].permute(1, 2, 0))

    def project_map(self, x: torch.Tensor) -> torch.Tensor:
        """The q/k/v projection (with its BN) of a feature map: ``[B, C, H, W] -> [B, 2K+V, H, W]``.

        Done on the map, before the axis is taken apart, it is one oneDNN 1x1 convolution
        (channels-last), ~30% faster than the same GEMM as ``F.linear`` over tokens.
        """
        weight = self.qkv.weight[:, :, None, None]
        if not self.training and self.qkv_bn.running_var is not None:
            scale, shift = _bn_affine(self.qkv_bn)
            return F.conv2d(x, weight * scale[:, None, None, None], shift)
        qkv = F.conv2d(x.contiguous(memory_format=torch.channels_last), weight)
        return _channels_last_bn(self.qkv_bn, qkv.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """The attention along the axis, on projected tokens: ``[B', L, 2K+V] -> [B', L, V]``."""
        if not self.training and self.similarity_bn.running_var is not None:
            return self._attend_folded(qkv)
        batch, length, _ = qkv.shape
        heads = self.num_heads
        dk, dv = self.key_channels // heads, self.value_channels // heads
        q, k, v = qkv.split([self.key_channels, self.key_channels, self.value_channels], dim=-1)
        q = q.reshape(batch, length, heads, dk).transpose(1, 2)  # [B', h, L, dk]
        k = k.reshape(batch, length, heads, dk).transpose(1, 2)
        v = v.reshape(batch, length, heads, dv).transpose(1, 2)  # [B', h, L, dv]

        index = relative_index(length, qkv.device)
        rpe_q = self.query_rpe[index]  # [L(o), L(p), dk]
        rpe_k = self.key_rpe[index]
        rpe_v = self.value_rpe[index]  # [L(o), L(p), dv]

        # The three logit terms and the two output terms are stacked with their channels
        # (term, head[, dv]) innermost, so each BN runs on a channels-last [N, C] view: on
        # CPU ~3x faster than on [N, C, L] when L (the axis) is short.
        content = (q @ k.transpose(-1, -2)).permute(0, 2, 3, 1)  # [B', L(o), L(p), h]
        # q_o . E_q[o, p]: batch over o -> [L(o), B'h, dk] @ [L(o), dk, L(p)].
        q_by_pos = q.permute(2, 0, 1, 3).reshape(length, batch * heads, dk)
        query_term = (q_by_pos @ rpe_q.transpose(1, 2)).reshape(length, batch, heads, length)
        query_term = query_term.permute(1, 0, 3, 2)
        # k_p . E_k[o, p]: batch over p -> [L(p), B'h, dk] @ [L(p), dk, L(o)].
        k_by_pos = k.permute(2, 0, 1, 3).reshape(length, batch * heads, dk)
        key_term = (k_by_pos @ rpe_k.permute(1, 2, 0)).reshape(length, batch, heads, length)
        key_term = key_term.permute(1, 3, 0, 2)

        logits = torch.stack([content, query_term, key_term], dim=3)  # [B', L, L, 3, h]
        logits = _channels_last_bn(self.similarity_bn, logits.flatten(3))
        logits = logits.unflatten(3, (3, heads)).sum(dim=3)  # [B', L(o), L(p), h]
        weights = logits.permute(0, 3, 1, 2).softmax(dim=-1)  # [B', h, L(o), L(p)]

        retrieved_content = (weights @ v).transpose(1, 2)  # [B', L, h, dv]
        w_by_pos = weights.permute(2, 0, 1, 3).reshape(length, batch * heads, length)
        retrieved_rpe = (w_by_pos @ rpe_v).reshape(length, batch, heads, dv).transpose(0, 1)
        out = torch.stack([retrieved_content, retrieved_rpe], dim=2)  # [B', L, 2, h, dv]
        out = _channels_last_bn(self.output_bn, out.flatten(2))  # [B', L, 2V]
        return out.unflatten(2, (2, self.value_channels)).sum(dim=2)  # [B', L, V]

    def _attend_folded(self, qkv: torch.Tensor) -> torch.Tensor:
        """Eval mode: every BN is an affine map, folded where it costs nothing.

        The qkv BN is folded into the projection (``project_map``); the per-(term, head) logit
        scales go into q and k before the matmuls, and their shifts are dropped (constant over
        the keys, they cancel in the softmax); the output BN becomes a scale per term and one
        shift. The three logit terms are accumulated in place instead of stacked.
        """
        batch, length, _ = qkv.shape
        heads, key, value = self.num_heads, self.key_channels, self.value_channels
        dk, dv = key // heads, value // heads
        q, k, v = qkv.split([key, key, value], dim=-1)
        q = q.reshape(batch, length, heads, dk)
        k = k.reshape(batch, length, heads, dk)
        v = v.reshape(batch, length, heads, dv).transpose(1, 2)  # [B', h, L, dv]
        term_scale = _bn_affine(self.similarity_bn)[0].reshape(3, heads, 1)
        index = relative_index(length, qkv.device)

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


def _channels_last_bn(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``bn`` over the last dimension of ``x`` (``[..., C]``), through an ``[N, C]`` view.

    The module itself runs (not ``F.batch_norm``), so ``SyncBatchNorm`` conversion still applies.
    """
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


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
        batch = x.shape[0]
        # Each axis projects its input as a 1x1 convolution on the 2-D map (see
        # ``AxialAttention.project_map``), then attends over [B x other axis, axis, channels].
        qkv = self.height_axis.project_map(x)  # [B, Q, H, W]
        _, channels, height, width = qkv.shape
        y = qkv.permute(0, 3, 2, 1).reshape(batch * width, height, channels)
        y = self.height_axis.attend(y).reshape(batch, width, height, self.value_channels)
        if self.stride > 1:
            y = y[:, :, :: self.stride]
            height = y.shape[2]
        # [B, W, H, V] read as a [B, V, W, H] map: channels-last memory, no copy.
        qkv = self.width_axis.project_map(y.permute(0, 3, 1, 2))  # [B, Q, W, H]
        channels = qkv.shape[1]
        y = qkv.permute(0, 3, 2, 1).reshape(batch * height, width, channels)
        y = self.width_axis.attend(y).reshape(batch, height, width, self.value_channels)
        if self.stride > 1:
            y = y[:, :, :: self.stride]
        # [B, H, W, V] memory is the channels-last layout the convolutions around want.
        return y.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
