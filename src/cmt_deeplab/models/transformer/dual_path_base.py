"""The modules MaX-DeepLab's dual-path layer and the CMT layer share (deeplab2 names).

Both layers project memory ``m [B, N, M]`` and pixels ``P [B, C_p, H, W]`` to a bottleneck of
``D`` channels, take queries/keys/values from it, let the memory attend to the pixels (and
itself) and run an FFN on the memory. Building these in one place keeps their module names,
widths, initialisation and construction order (hence the seeded initial weights) identical, so
a MaX layer's state dict loads into a CMT layer.
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.models.layers.init import trunc_normal_
from cmt_deeplab.models.layers.norm_act import ConvBN, LinearBN, get_activation
from cmt_deeplab.models.transformer.attention import AttentionOperation, split_heads


class DualPathBase(nn.Module):
    """Bottlenecks, q/k/v projections, memory attention, memory output projection and FFN.

    Widths: bottleneck ``D = filters * bottleneck_expansion``, keys
    ``K = filters * key_expansion``, values ``V = filters * value_expansion``.
    ``memory_qkv`` gives ``[q, k, v]`` (``K + K + V``) with ``memory_kv`` or ``q`` (``K``) alone;
    ``pixel_qkv`` gives ``[q, k, v]`` with ``pixel_query`` or ``[k, v]``. Subclasses add their own
    modules after these (registration order is the state-dict order) and their drop paths.
    """

    def __init__(
        self,
        pixel_channels: int,
        memory_channels: int,
        filters: int,
        num_heads: int,
        bottleneck_expansion: float,
        key_expansion: float,
        value_expansion: float,
        ffn_channels: int,
        activation: str,
        memory_kv: bool = True,
        pixel_query: bool = False,
    ) -> None:
        super().__init__()
        self.bottleneck_channels = bottleneck = int(round(filters * bottleneck_expansion))
        self.key_channels = key = int(round(filters * key_expansion))
        self.value_channels = value = int(round(filters * value_expansion))
        if key % num_heads or value % num_heads:
            raise ValueError("key and value channels must be divisible by the number of heads")
        self.num_heads = num_heads
        self.act = get_activation(activation)
        std = bottleneck**-0.5
        self.memory_conv1 = LinearBN(memory_channels, bottleneck, activation)
        self.pixel_conv1 = ConvBN(pixel_channels, bottleneck, 1, activation=activation)
        self.memory_qkv = LinearBN(bottleneck, key + (key + value if memory_kv else 0), std=std)
        self.pixel_qkv = ConvBN(bottleneck, (key if pixel_query else 0) + key + value, 1)
        trunc_normal_(self.pixel_qkv[0].weight, std)
        self.memory_attention = AttentionOperation(num_heads, value, activation)
        self.memory_conv3 = LinearBN(value, memory_channels, zero_init=True)
        self.ffn = nn.Sequential(
            LinearBN(memory_channels, ffn_channels, activation),
            LinearBN(ffn_channels, memory_channels, zero_init=True),
        )

    def project(
        self, pixels: torch.Tensor, memory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bottlenecks and q/k/v projections of both paths.

        Returns ``m' [B, N, D]``, ``p' [B, D, H, W]``, the memory q/k/v ``[B, N, .]`` and the
        pixel q/k/v ``[B, HW, .]`` (channels as described in the class docstring).
        """
        memory_space = self.memory_conv1(memory)
        # The pixel input is non-activated (the block's residual sum), hence act first.
        pixel_space = self.pixel_conv1(self.act(pixels))
        memory_qkv = self.memory_qkv(memory_space)
        pixel_qkv = self.pixel_qkv(pixel_space).flatten(2).transpose(1, 2)
        return memory_space, pixel_space, memory_qkv, pixel_qkv

    def attend_memory(
        self,
        query: torch.Tensor,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Memory queries ``[B, N, K]`` attend to the concatenated keys/values ``[B, L_i, .]``.

        One softmax over all of them; returns ``[B, N, V]`` and optionally the weights
        ``[B, h, N, sum L_i]``.
        """
        heads = self.num_heads
        return self.memory_attention(
            split_heads(query, heads),
            split_heads(torch.cat(keys, 1), heads),
            split_heads(torch.cat(values, 1), heads),
            return_weights=return_weights,
        )
