"""MaX-DeepLab-L's backbone, registered as ``wider_resnet``: a wide-ResNet-41 with axial blocks
(SWideRNet style), built on the Axial-ResNet family.

A 3x3/2 stem, then a stage 1 of 3 blocks at stride 2; convolutional blocks are ``basic``
(3x3 -> 3x3) below original stride 32 and ``wide_bottleneck`` (1x1 f, 3x3 2f, 1x1 4f) beyond.
MaX-DeepLab's decoder on this backbone uses the same blocks.
"""

from __future__ import annotations

from cmt_deeplab.models.backbones.axial_resnet import AxialResNet
from cmt_deeplab.models.backbones.registry import register_backbone
from cmt_deeplab.models.layers.stems import wide_resnet_stem


def wide_resnet_blocks(group_stride: int) -> str:
    """``basic`` blocks below original stride 32, ``wide_bottleneck`` from there on."""
    return "basic" if group_stride < 32 else "wide_bottleneck"


@register_backbone("wider_resnet")
def wide_resnet(**kwargs) -> AxialResNet:
    """The wide-ResNet (``AxialResNet``'s arguments); MaX-L: ``num_blocks=(3, 6, 3, 3)``."""
    return AxialResNet(**kwargs, stem=wide_resnet_stem, conv_block=wide_resnet_blocks,
                       stem_stage_blocks=3)
