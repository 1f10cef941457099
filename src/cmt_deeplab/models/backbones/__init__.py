"""Pixel encoders, selected by name through ``registry.build_backbone``; importing this package
registers every one (``resnet_beta``: Axial-ResNet, ``resnet``: ResNet-50, ``wider_resnet``:
MaX-L's wide-ResNet)."""

from cmt_deeplab.models.backbones.axial_resnet import (
    AXIAL_R50_BLOCKS,
    AXIAL_R104_BLOCKS,
    AxialResNet,
    axial_resnet50,
    axial_resnet104,
)
from cmt_deeplab.models.backbones.registry import build_backbone, list_backbones, register_backbone
from cmt_deeplab.models.backbones.resnet import resnet50
from cmt_deeplab.models.backbones.wide_resnet import wide_resnet

__all__ = [
    "AXIAL_R50_BLOCKS", "AXIAL_R104_BLOCKS", "AxialResNet", "axial_resnet50",
    "axial_resnet104", "build_backbone", "list_backbones", "register_backbone", "resnet50",
    "wide_resnet",
]
