"""Pixel encoders: Axial-ResNets and ResNet-50."""

from cmt_deeplab.models.backbones.axial_resnet import AxialResNet, axial_resnet50, axial_resnet104
from cmt_deeplab.models.backbones.resnet import resnet50

__all__ = ["AxialResNet", "axial_resnet50", "axial_resnet104", "resnet50"]
