"""MaX-DeepLab's dual-path transformer layer (deeplab2 ``DualPathTransformerLayer``).

Pixels ``P [B, C_p, H, W]`` (non-activated) and memory ``m [B, N, M]`` exchange information:

1. bottlenecks ``m' = act(BN(m W))``, ``p' = act(BN(act(P) W))`` to ``D`` channels;
2. M2P + M2M: memory queries attend to pixel *and* memory keys under one softmax over
   ``HW + N``; ``m <- act(m + drop(BN0(r W)))``; then FFN ``m <- act(m + drop(FFN(m)))``;
3. P2M: pixel queries attend to the memory keys/values of step 1 (from the layer's *input*
   memory); ``P <- P + drop(BN0(r W))`` (not activated).

P2P is the axial attention of the block before the layer. MaX-S widths (``filters`` = 128):
D = 256, K = 128, V = 256, 8 heads, FFN 2048; 2,503,712 params at C_p = 2048.
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.models.layers.block_group import TransformerState
from cmt_deeplab.models.layers.drop_path import DropPath
from cmt_deeplab.models.layers.norm_act import ConvBN, LinearBN, get_activation
from cmt_deeplab.models.transformer.attention import AttentionOperation, split_heads


class DualPathTransformerLayer(nn.Module):
    def __init__(
        self,
        pixel_channels: int,
        memory_channels: int = 256,
        filters: int = 128,
        num_heads: int = 8,
        bottleneck_expansion: float = 2.0,
        key_expansion: float = 1.0,
        value_expansion: float = 2.0,
        ffn_channels: int = 2048,
        use_memory_self_attention: bool = True,
        use_pixel2memory_attention: bool = True,
        drop_path_keep_prob: float = 1.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        bottleneck = int(round(filters * bottleneck_expansion))
        self.key_channels = int(round(filters * key_expansion))
        self.value_channels = int(round(filters * value_expansion))
        if self.key_channels % num_heads or self.value_channels % num_heads:
            raise ValueError("key and value channels must be divisible by the number of heads")
        self.num_heads = num_heads
        self.use_memory_self_attention = use_memory_self_attention
        self.use_pixel2memory_attention = use_pixel2memory_attention
        std = bottleneck**-0.5
        kv = self.key_channels + self.value_channels
        self.act = get_activation(activation)
        self.memory_conv1 = LinearBN(memory_channels, bottleneck, activation)
        self.pixel_conv1 = ConvBN(pixel_channels, bottleneck, 1, activation=activation)
        memory_qkv = self.key_channels + (kv if (use_memory_self_attention or use_pixel2memory_attention) else 0)
        self.memory_qkv = LinearBN(bottleneck, memory_qkv, std=std)
        pixel_qkv = kv + (self.key_channels if use_pixel2memory_attention else 0)
        self.pixel_qkv = ConvBN(bottleneck, pixel_qkv, 1)
        nn.init.trunc_normal_(self.pixel_qkv[0].weight, std=std, a=-2 * std, b=2 * std)
        self.memory_attention = AttentionOperation(num_heads, self.value_channels, activation)
        self.memory_conv3 = LinearBN(self.value_channels, memory_channels, zero_init=True)
        self.ffn = nn.Sequential(
            LinearBN(memory_channels, ffn_channels, activation),
            LinearBN(ffn_channels, memory_channels, zero_init=True),
        )
        if use_pixel2memory_attention:
            self.pixel_attention = AttentionOperation(num_heads, self.value_channels, activation)
            self.pixel_conv3 = ConvBN(self.value_channels, pixel_channels, 1, zero_init=True)
        self.drop_pixel = DropPath(drop_path_keep_prob)
        self.drop_attention = DropPath(drop_path_keep_prob)
        self.drop_ffn = DropPath(drop_path_keep_prob)

    def forward(
        self, pixels: torch.Tensor, memory: torch.Tensor, state: TransformerState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = pixels.shape
        heads, key, value = self.num_heads, self.key_channels, self.value_channels
        memory_space = self.memory_conv1(memory)  # [B, N, D]
        pixel_space = self.pixel_conv1(self.act(pixels))  # [B, D, H, W]
        memory_qkv = self.memory_qkv(memory_space)
        if self.use_memory_self_attention or self.use_pixel2memory_attention:
            memory_q, memory_k, memory_v = memory_qkv.split([key, key, value], dim=-1)
        else:
            memory_q, memory_k, memory_v = memory_qkv, None, None
        pixel_qkv = self.pixel_qkv(pixel_space).flatten(2).transpose(1, 2)  # [B, HW, .]
        if self.use_pixel2memory_attention:
            pixel_q, pixel_k, pixel_v = pixel_qkv.split([key, key, value], dim=-1)
        else:
            pixel_k, pixel_v = pixel_qkv.split([key, value], dim=-1)
        keys, values = [pixel_k], [pixel_v]
        if self.use_memory_self_attention:
            keys.append(memory_k)
            values.append(memory_v)
        return_maps = state is not None and state.return_maps
        retrieved, weights = self.memory_attention(
            split_heads(memory_q, heads),
            split_heads(torch.cat(keys, 1), heads),
            split_heads(torch.cat(values, 1), heads),
            return_weights=return_maps,
        )
        if return_maps:
            hw = height * width
            attention = weights[..., :hw].mean(dim=1).reshape(batch, -1, height, width)
            state.maps.append({"attention": attention.detach()})
        memory_out = self.act(memory + self.drop_attention(self.memory_conv3(retrieved)))
        memory_out = self.act(memory_out + self.drop_ffn(self.ffn(memory_out)))
        if self.use_pixel2memory_attention:
            retrieved_p, _ = self.pixel_attention(
                split_heads(pixel_q, heads), split_heads(memory_k, heads), split_heads(memory_v, heads)
            )
            retrieved_p = retrieved_p.transpose(1, 2).reshape(batch, value, height, width)
            pixels = pixels + self.drop_pixel(self.pixel_conv3(retrieved_p))
        return pixels, memory_out
