"""deeplab2's ResNet-50 (torchvision's layout without the max-pool; 23,508,032 params),
registered as ``resnet``: the Axial-ResNet family with the 7x7 stem.

The stride of the removed max-pool moves into the first block of stage 2, and every stride
sits on the 3x3 conv. ``resnet50(beta=True)`` swaps the 7x7 stem for the Inception stem.
"""

from __future__ import annotations

from torch import nn

from cmt_deeplab.models.backbones.axial_resnet import AXIAL_R50_BLOCKS, AxialResNet
from cmt_deeplab.models.backbones.registry import build_backbone, register_backbone
from cmt_deeplab.models.layers.block_group import BlockConfig
from cmt_deeplab.models.layers.stems import resnet_stem


@register_backbone("resnet")
def resnet(**kwargs) -> AxialResNet:
    """The ResNet with a 7x7 stem (``AxialResNet``'s arguments); with
    ``use_axial_beyond_stride=0`` and ``num_blocks=(3, 4, 6, 3)``, ResNet-50."""
    return AxialResNet(**kwargs, stem=resnet_stem)


def resnet50(output_stride: int = 32, beta: bool = False, **kwargs) -> nn.Module:
    config = BlockConfig(
        output_stride=output_stride, use_axial_beyond_stride=0, drop_path_keep_prob=1.0, **kwargs
    )
    return build_backbone("resnet_beta" if beta else "resnet", num_blocks=AXIAL_R50_BLOCKS,
                          config=config)
