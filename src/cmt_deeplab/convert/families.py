"""The conversion rules of each model class: whole MaX-DeepLab models, and the backbone
(ImageNet-pretrained encoder) of every model built on an Axial-ResNet or ResNet.

deeplab2 publishes MaX-DeepLab-S/-L COCO checkpoints and ImageNet backbones (MaX-S = our
Axial-R50, MaX-L, ResNet-50); it has no CMT-DeepLab, so CMT models take a backbone only.
"""

from __future__ import annotations

from torch import nn

from cmt_deeplab.convert.names import (
    ENCODER,
    Rule,
    Rules,
    Skip,
    axial_resnet,
    batch_norm,
    block_group,
    conv_bn,
    linear_bn,
    resized_fuse,
    separable,
)
from cmt_deeplab.models.cmt_deeplab import CMTDeepLab
from cmt_deeplab.models.heads.semantic_head import SemanticHead
from cmt_deeplab.models.max_deeplab import MaXDeepLab
from cmt_deeplab.models.rfn import RecursiveCMTDeepLab

NOT_BACKBONE = "not part of the backbone (--backbone-only)"
NO_TRANSFORMERS = "a transformer layer: the checkpoint's backbone has none (ImageNet pretraining)"


def conversion_rules(
    model: nn.Module, backbone_only: bool, stage_blocks: dict[str, int] | None = None
) -> Rules:
    """Every rule that fills ``model``'s state dict from a deeplab2 checkpoint.

    Args:
        model: a ``MaXDeepLab``, ``CMTDeepLab`` or ``RecursiveCMTDeepLab``.
        backbone_only: map the encoder only; every other tensor is listed as new.
        stage_blocks: the checkpoint's block count per encoder stage (``{"stage4": 6}``); with
            ``backbone_only`` a stage of another depth is listed as new instead of an error.

    Raises:
        ValueError: a model class (or a whole CMT model) that deeplab2 has no checkpoint for.
    """
    if isinstance(model, MaXDeepLab):
        return max_deeplab_rules(model, backbone_only, stage_blocks)
    if isinstance(model, RecursiveCMTDeepLab):
        _need_backbone_only(model, backbone_only)
        rules: Rules = []
        for net in ("net1", "net2"):
            rules += axial_resnet(getattr(model, net).backbone, f"{net}.backbone", ENCODER,
                                  False, stage_blocks)
        return [*rules, Skip("", "CMT-DeepLab decoder, clustering layers and heads: new")]
    if isinstance(model, CMTDeepLab):
        _need_backbone_only(model, backbone_only)
        rules = axial_resnet(model.backbone, "backbone", ENCODER, False, stage_blocks)
        return [*rules, Skip("", "CMT-DeepLab decoder, clustering layers and heads: new")]
    raise ValueError(f"no deeplab2 checkpoint layout is known for {type(model).__name__}")


def _need_backbone_only(model: nn.Module, backbone_only: bool) -> None:
    if not backbone_only:
        raise ValueError(
            f"deeplab2 publishes no {type(model).__name__} checkpoints: convert a backbone into "
            "it with --backbone-only (backbone_only=True)"
        )


def max_deeplab_rules(
    model: MaXDeepLab, backbone_only: bool, stage_blocks: dict[str, int] | None = None
) -> Rules:
    """MaX-DeepLab: the encoder (with the stacked decoder that MaX-L counts as backbone), the
    extra decoder, the memory path and the heads."""
    rules = axial_resnet(model.backbone, "backbone", ENCODER, not backbone_only,
                         stage_blocks if backbone_only else None)
    if model.stage5_extra is not None:
        rules += _unless(backbone_only, "stage5_extra.", lambda: block_group(
            model.stage5_extra, "stage5_extra", f"{ENCODER}/_stage5_extra"))
    for index, (fuse, backbone_group, extra_group) in enumerate(
        zip(model.fuses, model.backbone_groups, model.extra_groups, strict=True)
    ):
        stage = f"{ENCODER}/_decoder_stage{index + 1}"
        in_backbone = not isinstance(backbone_group, nn.Identity)
        # deeplab2 names a fuse by whether it was built as part of the backbone.
        if in_backbone:
            rules += resized_fuse(fuse, f"fuses.{index}", f"{stage}_resized_fuse")
            rules += block_group(backbone_group, f"backbone_groups.{index}", stage,
                                 not backbone_only, NO_TRANSFORMERS)
        else:
            rules += _unless(backbone_only, f"fuses.{index}.", lambda f=fuse, s=stage, i=index:
                             resized_fuse(f, f"fuses.{i}", f"{s}_extra_resized_fuse"))
        if not isinstance(extra_group, nn.Identity):
            rules += _unless(backbone_only, f"extra_groups.{index}.",
                             lambda g=extra_group, s=stage, i=index:
                             block_group(g, f"extra_groups.{i}", f"{s}_extra"))
    rules += _unless(backbone_only, "memory.", lambda: [
        Rule("memory.weight", (f"{ENCODER}/memory_feature",), "memory")])
    rules += _unless(backbone_only, "class_feature.", lambda: linear_bn(
        "class_feature", f"{ENCODER}/_class_feature_extra"))
    rules += _unless(backbone_only, "mask_feature.", lambda: linear_bn(
        "mask_feature", f"{ENCODER}/_mask_feature_extra"))
    rules += _unless(backbone_only, "predictor.", _prediction_head_rules)
    if model.semantic_head is not None:
        rules += _unless(backbone_only, "semantic_head.",
                         lambda: semantic_head_rules(model.semantic_head))
    return rules


def _unless(backbone_only: bool, prefix: str, rules) -> Rules:
    return [Skip(prefix, NOT_BACKBONE)] if backbone_only else rules()


def _prediction_head_rules() -> Rules:
    pixel = "pixel_space_head"
    return [
        *conv_bn("predictor.pixel_head.depthwise", f"{pixel}/conv_block/_conv1_bn_act/_depthwise",
                 depthwise=True),
        *conv_bn("predictor.pixel_head.pointwise", f"{pixel}/conv_block/_conv1_bn_act/_pointwise"),
        Rule("predictor.pixel_head.final.weight", (f"{pixel}/final_conv/kernel",), "conv"),
        Rule("predictor.pixel_head.final.bias", (f"{pixel}/final_conv/bias",), "copy"),
        *batch_norm("predictor.pixel_head.feature_bn", "pixel_space_feature_batch_norm"),
        *linear_bn("predictor.mask_head", "transformer_mask_head"),
        Rule("predictor.class_head.weight", ("transformer_class_head/_conv/kernel",), "conv1d"),
        Rule("predictor.class_head.bias", ("transformer_class_head/_conv/bias",), "copy"),
        *batch_norm("predictor.mask_bn", "pixel_space_mask_batch_norm"),
    ]


def semantic_head_rules(head: SemanticHead, ours: str = "semantic_head") -> Rules:
    """Panoptic-DeepLab's single decoder (``semantic_decoder``) and head."""
    rules: Rules = []
    if head.use_decoder:
        aspp = "semantic_decoder/_aspp"
        rules += conv_bn(f"{ours}.aspp.branches.0", f"{aspp}/_conv_bn_act")
        for index in range(1, len(head.aspp.branches)):
            rules += conv_bn(f"{ours}.aspp.branches.{index}",
                             f"{aspp}/_aspp_conv{index}/_conv_bn_act")
        rules += conv_bn(f"{ours}.aspp.pool", f"{aspp}/_aspp_pool/_conv_bn_act")
        rules += conv_bn(f"{ours}.aspp.project", f"{aspp}/_proj_conv_bn_act")
    for index in range(len(head.low_projections)):
        rules += conv_bn(f"{ours}.low_projections.{index}",
                         f"semantic_decoder/_low_level_conv{index + 1}")
        rules += separable(f"{ours}.fusions.{index}",
                           f"semantic_decoder/_fusion_conv{index + 1}/_conv1_bn_act")
    rules += separable(f"{ours}.head", "semantic_head_without_last_layer/_conv1_bn_act")
    rules += [Rule(f"{ours}.classifier.weight", ("semantic_last_layer/kernel",), "semantic_kernel"),
              Rule(f"{ours}.classifier.bias", ("semantic_last_layer/bias",), "semantic_bias")]
    return rules
