"""deeplab2's ResNet-50 (torchvision's layout without the max-pool; 23,508,032 params).

The stride of the removed max-pool moves into the first block of stage 2, and every stride
sits on the 3x3 conv. ``resnet50_beta`` swaps the 7x7 stem for the Inception stem.
"""

from __future__ import annotations

from cmt_deeplab.models.backbones.axial_resnet import AxialResNet
from cmt_deeplab.models.layers.block_group import BlockConfig


def resnet50(output_stride: int = 32, beta: bool = False, **kwargs) -> AxialResNet:
    config = BlockConfig(
        backbone_type="resnet_beta" if beta else "resnet",
        output_stride=output_stride,
        use_axial_beyond_stride=0,
        drop_path_keep_prob=1.0,
        **kwargs,
    )
    return AxialResNet((3, 4, 6, 3), config)
