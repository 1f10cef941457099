"""Axial-ResNets (Axial-DeepLab, MaX-DeepLab): the ResNet family every registered backbone
builds on (``resnet``, ``wider_resnet``), registered itself as ``resnet_beta``.

Five stages at original strides 2, 4, 8, 16, 32 with base widths 32 * 2^i (x ``width_multiplier``);
stage ``i`` outputs ``4 * filters`` channels (128 for the wide-ResNet's first stage). Blocks at
or beyond ``use_axial_beyond_stride`` are axial-attention blocks, others convolutional (the
family's ``conv_block`` rule). With ``output_stride`` 16 the last stage keeps stride 16 and uses
atrous rates instead.

``Axial-R50`` (MaX-S backbone): Inception stem, blocks (3, 4, 6, 3), axial beyond stride 16,
41,343,424 parameters. ``Axial-R104``: 24 blocks in stage 4, 81,642,112 parameters.

Endpoints are *non-activated* (``stage1`` .. ``stage5``); apply the activation for ``resN``.
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.models.backbones.registry import build_backbone, register_backbone
from cmt_deeplab.models.layers.block_group import (
    BlockConfig,
    BlockGroup,
    ConvBlockRule,
    TransformerFactory,
    TransformerState,
    bottleneck_blocks,
)
from cmt_deeplab.models.layers.recompute import run_module
from cmt_deeplab.models.layers.stems import StemFactory, inception_stem

#: Blocks of stages 2-5 of Axial-R50 and Axial-R104.
AXIAL_R50_BLOCKS = (3, 4, 6, 3)
AXIAL_R104_BLOCKS = (3, 4, 24, 3)


class AxialResNet(nn.Module):
    """Stem + stages. ``forward(images) -> (endpoints, memory)``; see the module docstring.

    The family's members differ in ``stem``, the ``conv_block`` rule and ``stem_stage_blocks``:
    the blocks of a stride-2 stage 1 after the stem (MaX-L's wide-ResNet has 3; with 0 the stem
    output is stage 1).
    """

    def __init__(
        self,
        num_blocks: tuple[int, int, int, int] = AXIAL_R50_BLOCKS,
        config: BlockConfig | None = None,
        width_multiplier: float = 1.0,
        stem_width_multiplier: float = 1.0,
        transformer_beyond_stride: int = 0,
        transformer_factory: TransformerFactory | None = None,
        base_transformer_expansion: float = 1.0,
        stem: StemFactory = inception_stem,
        conv_block: ConvBlockRule = bottleneck_blocks,
        stem_stage_blocks: int = 0,
    ) -> None:
        super().__init__()
        config = config or BlockConfig()
        self.config = config
        self.conv_block = conv_block
        total_strides = [1, 2, 4, 8, 16]
        strides = [2] * 5
        blocks_per_stage = [stem_stage_blocks, *num_blocks]
        filters = [int(round(s * 32 * width_multiplier)) for s in total_strides]
        if stem_stage_blocks:
            filters[0] = int(round(32 * stem_width_multiplier))
            first_stage = 0
            strides[0] = 1
            total_strides[0] = 2
        else:
            first_stage = 1
        self.stem, channels = stem(stem_width_multiplier, config.activation)
        self.recompute = "none"  # the stem's; the stages' is their own (set_recompute)
        self.first_stage = first_stage
        self.stages = nn.ModuleDict()
        self.stage_channels: dict[str, int] = {"stage1": channels}
        for index in range(first_stage, 5):
            group = BlockGroup(
                channels, filters[index], blocks_per_stage[index], strides[index],
                total_strides[index], config, transformer_beyond_stride, transformer_factory,
                base_transformer_expansion * total_strides[index] / 16.0, conv_block,
            )
            name = f"stage{index + 1}"
            self.stages[name] = group
            channels = group.out_channels
            self.stage_channels[name] = channels
        self.out_channels = channels

    def forward(
        self,
        images: torch.Tensor,
        memory: torch.Tensor | None = None,
        state: TransformerState | None = None,
        feedback: dict[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``feedback`` maps an endpoint name to a tensor averaged into that stage's output
        before the next stage runs (the recursive feature network's skip connection)."""
        x = run_module(self.stem, self.stem, images, mode=self.recompute)
        endpoints = {"stage1": x}
        for name, group in self.stages.items():
            x, memory = group(x, memory, state)
            if feedback is not None and name in feedback:
                x = 0.5 * (x + feedback[name])
            endpoints[name] = x
        return endpoints, memory


@register_backbone("resnet_beta")
def axial_resnet(**kwargs) -> AxialResNet:
    """The Axial-ResNet: Inception stem, bottleneck and axial blocks (``AxialResNet``'s
    arguments). Axial-R50 with ``num_blocks=AXIAL_R50_BLOCKS``, Axial-R104 with
    ``AXIAL_R104_BLOCKS``; ResNet-50-beta with ``use_axial_beyond_stride=0``."""
    return AxialResNet(**kwargs)


def axial_resnet50(output_stride: int = 16, drop_path_keep_prob: float = 1.0, **kwargs) -> nn.Module:
    """Axial-R50 = the MaX-DeepLab-S backbone without its transformers (41,343,424 params)."""
    config = BlockConfig(
        output_stride=output_stride, drop_path_keep_prob=drop_path_keep_prob, **kwargs
    )
    return build_backbone("resnet_beta", num_blocks=AXIAL_R50_BLOCKS, config=config)


def axial_resnet104(output_stride: int = 16, drop_path_keep_prob: float = 1.0, **kwargs) -> nn.Module:
    """Axial-R104: four times the stage-4 blocks of Axial-R50 (81,642,112 params)."""
    config = BlockConfig(
        output_stride=output_stride, drop_path_keep_prob=drop_path_keep_prob, **kwargs
    )
    return build_backbone("resnet_beta", num_blocks=AXIAL_R104_BLOCKS, config=config)
