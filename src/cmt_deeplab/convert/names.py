"""Which deeplab2 checkpoint variable fills which of our tensors, per model family.

deeplab2 names variables by the object path of its Keras layers (``encoder/_stage4/_block2/
_attention/_height_axis/qkv_kernel``); the rules below walk *our* modules and give, for every
state-dict entry, the variable that holds it and the layout rule that turns it into ours
(:mod:`cmt_deeplab.convert.layouts`). Names are given without the checkpoint's
``/.ATTRIBUTES/VARIABLE_VALUE`` suffix.

Correspondences (ours -> deeplab2):

- ``backbone.stem`` -> ``encoder/_stem`` (Inception stem: ``_conv1_bn_act``, ``_conv2_bn_act``,
  ``_conv3_bn``; ResNet / wide-ResNet stem: one conv + BN);
  ``backbone.stages.stageS.blocks.i`` -> ``encoder/_stageS/_block{i+1}``, its transformer
  ``transformers.i`` -> ``_block{i+1}_transformer``;
- ``stage5_extra`` -> ``encoder/_stage5_extra``; decoder stage ``j`` (0-based):
  ``fuses.j`` -> ``encoder/_decoder_stage{j+1}[_extra]_resized_fuse``, ``backbone_groups.j``
  -> ``_decoder_stage{j+1}``, ``extra_groups.j`` -> ``_decoder_stage{j+1}_extra``;
- ``class_feature`` / ``mask_feature`` -> ``encoder/_class_feature_extra`` / ``_mask_feature_extra``;
  ``memory`` -> ``encoder/memory_feature``;
- ``predictor`` -> ``pixel_space_head``, ``pixel_space_feature_batch_norm``,
  ``transformer_mask_head``, ``transformer_class_head``, ``pixel_space_mask_batch_norm``;
- ``semantic_head`` -> ``semantic_decoder`` (ASPP, low-level projections, fusions),
  ``semantic_head_without_last_layer``, ``semantic_last_layer``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from cmt_deeplab.models.backbones.axial_resnet import AxialResNet
from cmt_deeplab.models.layers.axial_attention import AxialAttention2D
from cmt_deeplab.models.layers.block_group import BlockGroup
from cmt_deeplab.models.layers.blocks import ResidualBlock
from cmt_deeplab.models.layers.norm_act import ConvBN
from cmt_deeplab.models.layers.resized_fuse import ResizedFuse
from cmt_deeplab.models.transformer.dual_path import DualPathTransformerLayer

ENCODER = "encoder"


@dataclass(frozen=True)
class Rule:
    """``target`` (our state-dict key) <- the first of ``sources`` present in the checkpoint."""

    target: str
    sources: tuple[str, ...]
    layout: str


@dataclass(frozen=True)
class Skip:
    """Our tensors under ``prefix`` that the checkpoint cannot fill, and why (listed as new)."""

    prefix: str
    reason: str


Rules = list[Rule | Skip]

_BN = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
       ("running_var", "moving_variance"))


def batch_norm(ours: str, theirs: str) -> Rules:
    return [Rule(f"{ours}.{a}", (f"{theirs}/{b}",), "flat") for a, b in _BN]


def conv_bn(ours: str, theirs: str, depthwise: bool = False, conv1d: bool = False) -> Rules:
    """Our ``ConvBN`` (``.0`` conv, ``.1`` BN) <- a deeplab2 ``Conv2DSame`` / ``Conv1D`` with BN."""
    if depthwise:
        kernel = Rule(f"{ours}.0.weight", (f"{theirs}/_depthwise_conv/depthwise_kernel",),
                      "depthwise")
    else:
        kernel = Rule(f"{ours}.0.weight", (f"{theirs}/_conv/kernel",),
                      "conv1d" if conv1d else "conv")
    return [kernel, *batch_norm(f"{ours}.1", f"{theirs}/_batch_norm")]


def linear_bn(ours: str, theirs: str) -> Rules:
    """Our ``LinearBN`` <- a deeplab2 ``Conv1D`` with BN (kernel ``[1, C_in, C_out]``)."""
    return [Rule(f"{ours}.linear.weight", (f"{theirs}/_conv/kernel",), "conv1d"),
            *batch_norm(f"{ours}.bn", f"{theirs}/_batch_norm")]


def separable(ours: str, theirs: str) -> Rules:
    """Our ``SeparableConvBN`` (depthwise ConvBN, pointwise ConvBN) <- deeplab2's
    ``SeparableConv2DSame`` (``_depthwise``, ``_pointwise``)."""
    return [*conv_bn(f"{ours}.0", f"{theirs}/_depthwise", depthwise=True),
            *conv_bn(f"{ours}.1", f"{theirs}/_pointwise")]


# --- pixel encoder / decoder building blocks -------------------------------------------------


def axial_attention(ours: str, theirs: str) -> Rules:
    rules: Rules = []
    for axis in ("height_axis", "width_axis"):
        o, t = f"{ours}.{axis}", f"{theirs}/_{axis}"
        rules += [
            Rule(f"{o}.qkv.weight", (f"{t}/qkv_kernel",), "dense"),
            *batch_norm(f"{o}.qkv_bn", f"{t}/_batch_norm_qkv"),
            *batch_norm(f"{o}.similarity_bn", f"{t}/_batch_norm_similarity"),
            *batch_norm(f"{o}.output_bn", f"{t}/_batch_norm_retrieved_output"),
        ]
        rules += [Rule(f"{o}.{name}_rpe", (f"{t}/_{name}_rpe/embeddings",), "copy")
                  for name in ("query", "key", "value")]
    return rules


def residual_block(block: ResidualBlock, ours: str, theirs: str) -> Rules:
    """deeplab2 ``AxialBlock``: ``_conv1_bn_act``, ``_conv2_bn_act`` / ``_attention`` / ``_conv2_bn``
    (basic), ``_conv3_bn``, ``_shortcut``."""
    kind = block.block_type
    if kind in ("bottleneck", "wide_bottleneck"):
        names = {0: "_conv1_bn_act", 1: "_conv2_bn_act", 2: "_conv3_bn"}
    elif kind == "axial":
        names = {0: "_conv1_bn_act", 3: "_conv3_bn"}
    elif kind == "basic":
        names = {0: "_conv1_bn_act", 1: "_conv2_bn"}
    else:
        raise ValueError(f"no deeplab2 names for block type {kind!r}")
    rules: Rules = []
    for index, name in names.items():
        rules += conv_bn(f"{ours}.branch.{index}", f"{theirs}/{name}")
    if kind == "axial":
        assert isinstance(block.branch[1], AxialAttention2D)
        rules += axial_attention(f"{ours}.branch.1", f"{theirs}/_attention")
    if block.shortcut is not None:
        rules += conv_bn(f"{ours}.shortcut", f"{theirs}/_shortcut")
    return rules


def dual_path(ours: str, theirs: str) -> Rules:
    """deeplab2 ``DualPathTransformerLayer`` (``_block{i}_transformer``)."""
    rules = [
        *linear_bn(f"{ours}.memory_conv1", f"{theirs}/_memory_conv1_bn_act"),
        *conv_bn(f"{ours}.pixel_conv1", f"{theirs}/_pixel_conv1_bn_act", conv1d=True),
        *linear_bn(f"{ours}.memory_qkv", f"{theirs}/_memory_qkv_conv_bn"),
        *conv_bn(f"{ours}.pixel_qkv", f"{theirs}/_pixel_qkv_conv_bn", conv1d=True),
        *linear_bn(f"{ours}.memory_conv3", f"{theirs}/_memory_conv3_bn"),
        *linear_bn(f"{ours}.ffn.0", f"{theirs}/_memory_ffn_conv1_bn_act"),
        *linear_bn(f"{ours}.ffn.1", f"{theirs}/_memory_ffn_conv2_bn"),
        *conv_bn(f"{ours}.pixel_conv3", f"{theirs}/_pixel_conv3_bn", conv1d=True),
    ]
    for attention in ("memory_attention", "pixel_attention"):
        rules += batch_norm(f"{ours}.{attention}.similarity_bn",
                            f"{theirs}/_{attention}/_batch_norm_similarity")
        rules += batch_norm(f"{ours}.{attention}.value_bn",
                            f"{theirs}/_{attention}/_batch_norm_retrieved_value")
    return rules


def block_group(
    group: BlockGroup, ours: str, theirs: str, transformers: bool = True,
    transformer_reason: str = "",
) -> Rules:
    """deeplab2 ``BlockGroup``: ``_block{i+1}`` and ``_block{i+1}_transformer``.

    ``transformers=False`` lists the group's transformer layers as new (ImageNet backbones
    have none).
    """
    rules: Rules = []
    for index, (block, transformer) in enumerate(
        zip(group.blocks, group.transformers, strict=True)
    ):
        rules += residual_block(block, f"{ours}.blocks.{index}", f"{theirs}/_block{index + 1}")
        if isinstance(transformer, nn.Identity):
            continue
        if not isinstance(transformer, DualPathTransformerLayer):
            raise ValueError(f"no deeplab2 names for {type(transformer).__name__} at {ours}")
        if transformers:
            rules += dual_path(f"{ours}.transformers.{index}",
                               f"{theirs}/_block{index + 1}_transformer")
        else:
            rules.append(Skip(f"{ours}.transformers.{index}.", transformer_reason))
    return rules


def resized_fuse(fuse: ResizedFuse, ours: str, theirs: str) -> Rules:
    """deeplab2 names the projection of input ``i`` ``_strided_conv_bn{i+1}`` or
    ``_resized_conv_bn{i+1}`` depending on the size it was built at; the weights are the same."""
    rules: Rules = []
    for index, conv in enumerate(fuse.convs):
        if isinstance(conv, nn.Identity):
            continue
        for rule in conv_bn(f"{ours}.convs.{index}", f"{theirs}/_resized_conv_bn{index + 1}"):
            resized = rule.sources[0]
            strided = resized.replace("/_resized_conv_bn", "/_strided_conv_bn", 1)
            rules.append(Rule(rule.target, (resized, strided), rule.layout))
    return rules


def stem(backbone: AxialResNet, ours: str, theirs: str) -> Rules:
    """The Inception stem (three convs, Axial-ResNet's ``resnet_beta``) or a single conv."""
    if not isinstance(backbone.stem, ConvBN):
        return [*conv_bn(f"{ours}.0", f"{theirs}/_conv1_bn_act"),
                *conv_bn(f"{ours}.1", f"{theirs}/_conv2_bn_act"),
                *conv_bn(f"{ours}.2", f"{theirs}/_conv3_bn")]
    return conv_bn(ours, theirs)


def axial_resnet(
    backbone: AxialResNet, ours: str, theirs: str = ENCODER, transformers: bool = True,
    stage_blocks: dict[str, int] | None = None,
) -> Rules:
    """Stem and stages of an Axial-ResNet / ResNet / wide-ResNet.

    Args:
        transformers: map the stages' dual-path layers too (full MaX checkpoints).
        stage_blocks: the checkpoint's block count per stage; a stage whose count differs from
            ours (Axial-R104's 24 stage-4 blocks against Axial-R50's 6) is listed as new.
    """
    rules = stem(backbone, f"{ours}.stem", f"{theirs}/_stem")
    reason = "a transformer layer: the checkpoint's backbone has none (ImageNet pretraining)"
    for name, group in backbone.stages.items():
        found = (stage_blocks or {}).get(name)
        if stage_blocks is not None and found != len(group.blocks):
            rules.append(Skip(f"{ours}.stages.{name}.",
                              f"{name} has {len(group.blocks)} blocks, the checkpoint's "
                              f"{found or 0}"))
            continue
        rules += block_group(group, f"{ours}.stages.{name}", f"{theirs}/_{name}", transformers,
                             reason)
    return rules
