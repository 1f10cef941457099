"""Pixel encoders by name: a backbone is one module with one ``@register_backbone(name)``
constructor, and ``backbone_type=name`` then selects it in every model config.

| name            | module          | backbone                                  | used by      |
|-----------------|-----------------|-------------------------------------------|--------------|
| ``resnet_beta`` | ``axial_resnet``| Axial-ResNet, Inception stem: Axial-R50   | MaX-S, CMT-S,|
|                 |                 | (3, 4, 6, 3), Axial-R104 (3, 4, 24, 3)    | CMT-L (-RFN) |
| ``resnet``      | ``resnet``      | deeplab2's ResNet-50 (7x7 stem, with      | CMT-R50      |
|                 |                 | ``use_axial_beyond_stride=0``)            |              |
| ``wider_resnet``| ``wide_resnet`` | MaX-L's wide-ResNet-41 with axial blocks  | MaX-L        |

A constructor takes these keyword arguments (those it has no use for it may reject):
``num_blocks`` (blocks of stages 2-5), ``config`` (the ``BlockConfig`` of its residual
blocks), ``width_multiplier``, ``stem_width_multiplier``, and for backbones that carry
transformer layers (MaX-DeepLab) ``transformer_beyond_stride``, ``transformer_factory``,
``base_transformer_expansion``. It returns a :class:`Backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn


class Backbone(Protocol):
    """What the meta-architectures need of a pixel encoder (an ``nn.Module``).

    ``backbone(images [B, 3, H, W], memory=None, state=None, feedback=None)`` returns
    ``(endpoints, memory)``: ``endpoints`` maps ``stage1`` .. ``stage5`` (strides 2 .. 32, or
    capped at the output stride) to *non-activated* ``[B, C, H', W']`` tensors; ``memory`` and
    ``state`` pass through transformer layers the backbone carries (MaX-DeepLab); ``feedback``
    maps an endpoint name to a tensor averaged into that stage's output (RFN).
    ``stage_channels`` gives the endpoints' channel counts; ``conv_block(group_stride)`` names
    the non-axial residual block the backbone uses at a stride, which MaX-DeepLab's decoder
    reuses.
    """

    stage_channels: dict[str, int]

    def conv_block(self, group_stride: int) -> str: ...


BackboneConstructor = Callable[..., nn.Module]

_BACKBONES: dict[str, BackboneConstructor] = {}


def register_backbone(name: str) -> Callable[[BackboneConstructor], BackboneConstructor]:
    """Registers a backbone constructor under ``name`` (the configs' ``backbone_type``)."""

    def decorator(constructor: BackboneConstructor) -> BackboneConstructor:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = constructor
        return constructor

    return decorator


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Builds the backbone registered as ``name`` with the keyword arguments above."""
    try:
        constructor = _BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone type {name!r}; registered: {', '.join(list_backbones())}"
        ) from None
    return constructor(**kwargs)
