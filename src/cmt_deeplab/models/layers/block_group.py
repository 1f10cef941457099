"""A group of residual blocks at one resolution, optionally each followed by a transformer
layer on the (pixel, memory) pair: deeplab2's ``BlockGroup``, used by both the backbones and
the decoders.

The group tracks the *original ResNet stride* of each block (the stride a plain output-stride-32
ResNet would have there). It decides the block type (axial beyond ``use_axial_beyond_stride``,
else what the ``conv_block`` rule of the backbone family names), the atrous rate (beyond
``output_stride``), the drop-path rate and whether a transformer layer follows the block
(beyond ``transformer_beyond_stride``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from cmt_deeplab.models.layers.blocks import ResidualBlock
from cmt_deeplab.models.layers.drop_path import drop_path_keep_prob
from cmt_deeplab.models.layers.recompute import run_block, run_transformer

#: ``factory(pixel_channels, drop_path_keep_prob, transformer_expansion) -> nn.Module``
TransformerFactory = Callable[[int, float, float], nn.Module]

#: ``rule(group_stride) -> ResidualBlock type`` of the non-axial blocks of a backbone family,
#: ``group_stride`` being the original stride after the group's first block.
ConvBlockRule = Callable[[int], str]


def bottleneck_blocks(group_stride: int) -> str:
    """The ResNet rule: bottleneck blocks at every stride."""
    del group_stride
    return "bottleneck"


@dataclass
class BlockSettings:
    """Block settings that ``BlockConfig`` and the model configs share, under the same names.

    The model configs (``CMTDeepLabConfig``, ``MaXDeepLabConfig``) derive from it, so these are
    also keyword arguments of ``build_model``; ``block_config`` turns them into a ``BlockConfig``.
    """

    output_stride: int = 16
    drop_path_keep_prob: float = 1.0
    drop_path_beyond_stride: int = 16
    drop_path_schedule: str = "constant"
    activation: str = "relu"
    attention_bottleneck_expansion: int = 2
    key_expansion: float = 1.0
    value_expansion: float = 2.0

    def block_config(self, use_axial_beyond_stride: int, num_heads: int) -> BlockConfig:
        """A ``BlockConfig`` with these settings.

        The two settings a model config may name otherwise (CMT-DeepLab has one per encoder and
        decoder, and separate head counts for axial and CMT attention) are passed explicitly.
        """
        settings = {f.name: getattr(self, f.name) for f in fields(BlockSettings)}
        return BlockConfig(
            **settings, use_axial_beyond_stride=use_axial_beyond_stride, num_heads=num_heads
        )


@dataclass
class BlockConfig(BlockSettings):
    """Settings shared by every block group of a network."""

    use_axial_beyond_stride: int = 16
    num_heads: int = 8


@dataclass
class TransformerState:
    """What transformer layers pass along besides pixels and memory."""

    prev_mask_logits: torch.Tensor | None = None
    aux_outputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    maps: list[dict[str, torch.Tensor]] = field(default_factory=list)
    return_maps: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    # False skips the per-layer predictions only the deep-supervision losses read (inference).
    record_aux: bool = True


class BlockGroup(nn.Module):
    """``num_blocks`` residual blocks (+ transformer layers): ``[B, C_in, H, W] -> [B, C, H', W']``."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        num_blocks: int,
        original_stride: int,
        original_input_stride: int,
        config: BlockConfig,
        transformer_beyond_stride: int = 0,
        transformer_factory: TransformerFactory | None = None,
        transformer_expansion: float = 1.0,
        conv_block: ConvBlockRule = bottleneck_blocks,
    ) -> None:
        super().__init__()
        if original_input_stride & (original_input_stride - 1):
            raise ValueError(f"original_input_stride {original_input_stride} is not a power of 2")
        os_ = config.output_stride
        current = original_input_stride
        self.blocks = nn.ModuleList()
        self.transformers = nn.ModuleList()
        channels = in_channels
        for index in range(num_blocks):
            stride = original_stride if index == 0 and original_input_stride < os_ else 1
            atrous = current // os_ if current > os_ else 1
            group_stride = original_input_stride * original_stride
            second_atrous = group_stride // os_ if index == 0 and group_stride > os_ else atrous
            keep = drop_path_keep_prob(
                config.drop_path_keep_prob, config.drop_path_schedule, current,
                config.drop_path_beyond_stride,
            )
            axial = current >= config.use_axial_beyond_stride > 0
            block_type = "axial" if axial else conv_block(group_stride)
            block = ResidualBlock(
                channels, filters, block_type, stride, atrous, second_atrous, keep,
                config.activation, config.attention_bottleneck_expansion, config.key_expansion,
                config.value_expansion, config.num_heads,
            )
            self.blocks.append(block)
            channels = block.out_channels
            if index == 0 and original_stride > 1:
                current *= original_stride
            if transformer_factory is not None and current >= transformer_beyond_stride > 0:
                self.transformers.append(transformer_factory(channels, keep, transformer_expansion))
            else:
                self.transformers.append(nn.Identity())
        self.out_channels = channels
        self.recompute = "none"  # layers/recompute.py: set_recompute(model, mode)

    @property
    def has_transformer(self) -> bool:
        return any(not isinstance(t, nn.Identity) for t in self.transformers)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        state: TransformerState | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for block, transformer in zip(self.blocks, self.transformers, strict=True):
            x = run_block(block, x, self.recompute)
            if not isinstance(transformer, nn.Identity):
                x, memory = run_transformer(transformer, x, memory, state, self.recompute)
        return x, memory
