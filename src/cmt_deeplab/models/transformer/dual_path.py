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

from cmt_deeplab.models.layers.block_group import TransformerState
from cmt_deeplab.models.layers.drop_path import DropPath
from cmt_deeplab.models.layers.norm_act import ConvBN
from cmt_deeplab.models.transformer.attention import AttentionOperation, split_heads
from cmt_deeplab.models.transformer.dual_path_base import DualPathBase


class DualPathTransformerLayer(DualPathBase):
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
        # Memory keys/values serve M2M and P2M; pixel queries only P2M.
        super().__init__(
            pixel_channels, memory_channels, filters, num_heads, bottleneck_expansion,
            key_expansion, value_expansion, ffn_channels, activation,
            memory_kv=use_memory_self_attention or use_pixel2memory_attention,
            pixel_query=use_pixel2memory_attention,
        )
        self.use_memory_self_attention = use_memory_self_attention
        self.use_pixel2memory_attention = use_pixel2memory_attention
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
        _, _, memory_qkv, pixel_qkv = self.project(pixels, memory)
        if self.use_memory_self_attention or self.use_pixel2memory_attention:
            memory_q, memory_k, memory_v = memory_qkv.split([key, key, value], dim=-1)
        else:
            memory_q, memory_k, memory_v = memory_qkv, None, None
        if self.use_pixel2memory_attention:
            pixel_q, pixel_k, pixel_v = pixel_qkv.split([key, key, value], dim=-1)
        else:
            pixel_k, pixel_v = pixel_qkv.split([key, value], dim=-1)
        keys, values = [pixel_k], [pixel_v]
        if self.use_memory_self_attention:
            keys.append(memory_k)
            values.append(memory_v)
        return_maps = state is not None and state.return_maps
        retrieved, weights = self.attend_memory(memory_q, keys, values, return_maps)
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
