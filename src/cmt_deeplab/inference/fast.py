"""Inference-only rewrites that keep a model's outputs (within float rounding) and make it
faster: BN folded into the convolution or projection before it (or, for the CMT layer's
clustering update, after it), channels-last layout, and no per-layer auxiliary predictions
(``aux_outputs`` comes back empty: only the deep-supervision losses read it). Modules with a
``fused_inference`` switch (the CMT layer's pixel update, the memory attention's logit BN)
take their folded eval-only path.

The result is for ``eval()`` use only (its BNs are gone), so it is a copy unless ``inplace``.
Parameter and MAC counts are those of the original model; count on it, not on this.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from cmt_deeplab.models.heads.prediction_head import PixelHead
from cmt_deeplab.models.layers.float32 import float32_modules
from cmt_deeplab.models.layers.norm_act import ConvBN, LinearBN
from cmt_deeplab.models.transformer.cmt_layer import ClusteringMaskTransformerLayer


@torch.no_grad()
def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.bias = nn.Parameter(bias)


@torch.no_grad()
def _fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> None:
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    linear.weight.mul_(scale[:, None])
    bias = bn.bias - bn.running_mean * scale
    if linear.bias is not None:
        bias = bias + linear.bias * scale
    linear.bias = nn.Parameter(bias)


@torch.no_grad()
def _fold_bn_into_next_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> None:
    """``linear(BN(x)) = (W diag(s)) x + (W t + b)`` with BN's eval affine ``s x + t``."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    bias = linear.weight @ shift
    if linear.bias is not None:
        bias = bias + linear.bias
    linear.weight.mul_(scale[None, :])
    linear.bias = nn.Parameter(bias)


def fold_batchnorm(model: nn.Module) -> int:
    """Folds every ``ConvBN`` / ``LinearBN`` BN into its conv / linear, the pixel head's feature
    BN into its last conv and the CMT clustering update's value BN into the projection after
    it, in place; returns how many."""
    folded = 0
    for module in model.modules():
        # Before the LinearBNs: the value BN's shift becomes a bias that the BN after the
        # projection then scales.
        if (isinstance(module, ClusteringMaskTransformerLayer) and module.use_clustering_update
                and isinstance(module.cluster_value_bn, nn.BatchNorm1d)):
            _fold_bn_into_next_linear(module.cluster_value_bn, module.cluster_conv3.linear)
            module.cluster_value_bn = nn.Identity()
            folded += 1
        elif isinstance(module, PixelHead) and isinstance(module.feature_bn, nn.BatchNorm2d):
            _fold_conv_bn(module.final, module.feature_bn)
            module.feature_bn = nn.Identity()
            folded += 1
    for module in model.modules():
        if isinstance(module, ConvBN) and isinstance(module[1], nn.BatchNorm2d):
            _fold_conv_bn(module[0], module[1])
            module[1] = nn.Identity()
            folded += 1
        elif isinstance(module, LinearBN) and module.bn is not None:
            _fold_linear_bn(module.linear, module.bn)
            module.bn = None
            folded += 1
    return folded


@torch.no_grad()
def cast_layer_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Casts every convolution's and linear layer's weight and bias to ``dtype`` in place (after
    ``fold_batchnorm``: the folded values are the ones rounded); returns how many layers.

    Under ``torch.autocast`` these layers run in ``dtype`` anyway, but autocast casts their
    float32 weights again at every call; a copy kept in ``dtype`` skips that (and the memory
    traffic of it). Norms, BN statistics and everything else stay float32, so autocast keeps
    running the ops it lists as float32 in float32; so do the layers of modules that compute
    in float32 under autocast (``keep_float32``, ``models.layers.float32``).
    """
    kept = float32_modules(model)
    cast = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module not in kept:
            module.to(dtype)
            cast += 1
    return cast


def optimize_for_inference(
    model: nn.Module,
    inplace: bool = False,
    channels_last: bool = True,
    weight_dtype: torch.dtype | None = None,
) -> nn.Module:
    """An eval-mode copy of ``model`` with BNs folded (and channels-last weights); with
    ``weight_dtype``, its conv and linear weights in that dtype (``cast_layer_weights``: run
    it under ``torch.autocast`` to that dtype)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    fold_batchnorm(model)
    for module in model.modules():
        if hasattr(module, "return_aux_outputs"):
            module.return_aux_outputs = False
        if hasattr(module, "fused_inference"):
            module.fused_inference = True
    if weight_dtype is not None:
        cast_layer_weights(model, weight_dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for param in model.parameters():
        param.requires_grad_(False)
    return model
