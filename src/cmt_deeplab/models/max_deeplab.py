"""MaX-DeepLab (Wang et al., CVPR 2021): an Axial-ResNet with dual-path transformers and a
(stacked) decoder, as deeplab2's ``AxialResNet`` + ``MaXDeepLab`` decoder build it.

MaX-DeepLab-S: Axial-R50 at output stride 16, a dual-path transformer after each of the 3
stage-5 blocks and after one extra axial block (``stage5_extra``), a decoder back to stride 4
(one conv block at stride 8 and 4), MaX heads: 61,900,200 parameters.
MaX-DeepLab-L: wide-ResNet-41 with axial blocks, transformers beyond stride 16, one stacked
decoder in the backbone and one extra (3 blocks per stage): 450,763,880 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from cmt_deeplab.models.backbones import build_backbone
from cmt_deeplab.models.heads.prediction_head import PredictionHead
from cmt_deeplab.models.heads.semantic_head import SemanticHead
from cmt_deeplab.models.layers.block_group import BlockGroup, BlockSettings, TransformerState
from cmt_deeplab.models.layers.norm_act import LinearBN, get_activation
from cmt_deeplab.models.layers.resized_fuse import ResizedFuse
from cmt_deeplab.models.meta_arch import SlotTable, check_images
from cmt_deeplab.models.registry import register_model
from cmt_deeplab.models.transformer.dual_path import DualPathTransformerLayer


@dataclass
class MaXDeepLabConfig(BlockSettings):
    """Every number of a MaX-DeepLab variant (defaults: MaX-DeepLab-S, COCO).

    The residual-block settings (``output_stride``, drop path, activation, axial attention
    widths) come from ``BlockSettings``; ``num_heads`` serves both the axial blocks and the
    dual-path transformers. ``backbone_type`` names a backbone registered with
    ``register_backbone``; the decoder uses its blocks.
    """

    num_classes: int = 133
    num_thing_classes: int = 80
    num_slots: int = 128
    max_num_slots: int = 128
    backbone_type: str = "resnet_beta"
    num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    width_multiplier: float = 1.0
    stem_width_multiplier: float = 1.0
    use_axial_beyond_stride: int = 16
    backbone_transformer_beyond_stride: int = 32
    extra_decoder_transformer_beyond_stride: int = 32
    backbone_decoder_num_stacks: int = 0
    backbone_decoder_blocks_per_stage: int = 1
    extra_decoder_num_stacks: int = 0
    extra_decoder_blocks_per_stage: int = 1
    memory_channels: int = 256
    base_transformer_expansion: float = 1.0
    global_ffn_channels: int = 256
    high_resolution_output_stride: int = 4
    num_heads: int = 8
    transformer_ffn_channels: int = 2048
    drop_path_keep_prob: float = 0.8  # BlockSettings' default is 1.0
    pixel_feature_dim: int = 128
    use_semantic_head: bool = True
    semantic_channels: int = 256
    semantic_projections: tuple[int, int] = (64, 32)

    def __post_init__(self) -> None:
        # Sequences read from YAML or JSON (checkpoint configs) arrive as lists.
        self.num_blocks = tuple(self.num_blocks)
        self.semantic_projections = tuple(self.semantic_projections)


@dataclass
class _DecoderStage:
    stride: int
    backbone_end: bool


class MaXDeepLab(nn.Module):
    """``model(images) -> outputs``; see :mod:`cmt_deeplab.models.meta_arch` for the contract."""

    def __init__(self, config: MaXDeepLabConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.extra_decoder_blocks_per_stage <= 0:
            raise ValueError("extra_decoder_blocks_per_stage must be > 0")
        self.act = get_activation(c.activation)
        self.return_aux_outputs = True  # False: no per-layer predictions (inference.fast)
        blocks = c.block_config(c.use_axial_beyond_stride, c.num_heads)
        transformer = partial(self._make_transformer, c)
        self.memory = SlotTable(c.num_slots, c.memory_channels, c.max_num_slots)
        self.backbone = build_backbone(
            c.backbone_type, num_blocks=c.num_blocks, config=blocks,
            width_multiplier=c.width_multiplier, stem_width_multiplier=c.stem_width_multiplier,
            transformer_beyond_stride=c.backbone_transformer_beyond_stride,
            transformer_factory=transformer, base_transformer_expansion=c.base_transformer_expansion,
        )
        conv_block = self.backbone.conv_block  # the decoder's blocks are the backbone's
        channels = dict(self.backbone.stage_channels)
        os_ = c.output_stride
        current_channels = channels["stage5"]
        is_backbone = c.backbone_decoder_num_stacks != 0
        self.stage5_extra = None
        if not is_backbone:
            self.stage5_extra = BlockGroup(
                current_channels, int(round(512 * c.width_multiplier)),
                c.extra_decoder_blocks_per_stage, 1, 32, blocks,
                c.extra_decoder_transformer_beyond_stride, transformer,
                c.base_transformer_expansion, conv_block,
            )
            current_channels = self.stage5_extra.out_channels
        # The stride -> feature-list bookkeeping of deeplab2, on channel counts.
        stride_channels = {min(2, os_): [channels["stage1"]], min(4, os_): [channels["stage2"]],
                           min(8, os_): [channels["stage3"]], min(16, os_): [channels["stage4"]]}
        stride_channels[min(32, os_)] = [current_channels]

        self.fuses = nn.ModuleList()
        self.backbone_groups = nn.ModuleList()
        self.extra_groups = nn.ModuleList()
        self.stages: list[_DecoderStage] = []
        total_stacks = c.backbone_decoder_num_stacks + c.extra_decoder_num_stacks
        current_stack, stride, going_down = 0, os_, True
        while current_stack < total_stacks or stride > c.high_resolution_output_stride:
            stride = stride // 2 if going_down else stride * 2
            if stride == os_:
                current_stack += 1
                going_down = True
                original_input_stride = 32
            else:
                original_input_stride = stride
            width = int(round(original_input_stride * 64 * c.width_multiplier))
            expansion = c.base_transformer_expansion * stride / 16.0
            inputs = [current_channels] + stride_channels[stride][-2:]
            self.fuses.append(ResizedFuse(inputs, width, c.activation))
            current_channels = width
            group = None
            if is_backbone:
                group = BlockGroup(
                    width, width // 4, c.backbone_decoder_blocks_per_stage, 1,
                    original_input_stride, blocks, c.backbone_transformer_beyond_stride,
                    transformer, expansion, conv_block,
                )
                current_channels = group.out_channels
            self.backbone_groups.append(group or nn.Identity())
            backbone_end = stride == os_ and current_stack == c.backbone_decoder_num_stacks
            if backbone_end:
                is_backbone = False
            group = None
            if not is_backbone:
                group = BlockGroup(
                    current_channels, width // 4, c.extra_decoder_blocks_per_stage, 1,
                    original_input_stride, blocks, c.extra_decoder_transformer_beyond_stride,
                    transformer, expansion, conv_block,
                )
                current_channels = group.out_channels
            self.extra_groups.append(group or nn.Identity())
            stride_channels[stride].append(current_channels)
            self.stages.append(_DecoderStage(stride, backbone_end))
            if stride == c.high_resolution_output_stride:
                going_down = False
        self.panoptic_channels = current_channels

        self.class_feature = LinearBN(c.memory_channels, c.global_ffn_channels, c.activation)
        self.mask_feature = LinearBN(c.memory_channels, c.global_ffn_channels, c.activation)
        self.predictor = PredictionHead(
            c.num_classes, self.panoptic_channels, c.global_ffn_channels, c.pixel_feature_dim,
            activation=c.activation,
        )
        self.semantic_head = None
        if c.use_semantic_head:
            if c.extra_decoder_num_stacks:
                # The semantic feature is then already at stride 4: head only, no decoder.
                self.semantic_head = SemanticHead(
                    c.num_classes, current_channels, channels=c.semantic_channels,
                    activation=c.activation, use_decoder=False,
                )
            else:
                self.semantic_head = SemanticHead(
                    c.num_classes, channels["stage5"], (channels["stage3"], channels["stage2"]),
                    tuple(c.semantic_projections), c.semantic_channels, c.activation,
                )

    @staticmethod
    def _make_transformer(
        c: MaXDeepLabConfig, pixel_channels: int, keep_prob: float, expansion: float
    ) -> nn.Module:
        return _RecordingDualPath(
            pixel_channels, c.memory_channels, int(128 * expansion), c.num_heads,
            ffn_channels=c.transformer_ffn_channels, drop_path_keep_prob=keep_prob,
            activation=c.activation,
        )

    def forward(self, images: torch.Tensor, return_maps: bool = False) -> dict:
        check_images(images)
        c = self.config
        state = TransformerState(return_maps=return_maps)
        memory = self.memory(images.shape[0])
        endpoints, memory = self.backbone(images, memory, state)
        current = endpoints["stage5"]
        backbone_output = self.act(current)
        if self.stage5_extra is not None:
            current, memory = self.stage5_extra(current, memory, state)
        os_ = c.output_stride
        features = {min(2, os_): [endpoints["stage1"]], min(4, os_): [endpoints["stage2"]],
                    min(8, os_): [endpoints["stage3"]], min(16, os_): [endpoints["stage4"]]}
        features[min(32, os_)] = [current]
        high_resolution = []
        for stage, fuse, backbone_group, extra_group in zip(
            self.stages, self.fuses, self.backbone_groups, self.extra_groups, strict=True
        ):
            size = tuple(features[stage.stride][0].shape[-2:])
            current = fuse([current] + features[stage.stride][-2:], size)
            if not isinstance(backbone_group, nn.Identity):
                current, memory = backbone_group(current, memory, state)
            if stage.backbone_end:
                backbone_output = self.act(current)
            if not isinstance(extra_group, nn.Identity):
                current, memory = extra_group(current, memory, state)
            features[stage.stride].append(current)
            if stage.stride == c.high_resolution_output_stride:
                high_resolution.append(self.act(current))
        feature_panoptic = high_resolution[-1]

        outputs = self._predict(feature_panoptic, memory)
        # An inference copy (``inference.fast``) leaves out what only the losses read.
        memories = state.extras.get("memories", [])[:-1] if self.return_aux_outputs else []
        outputs["aux_outputs"] = [
            self._predict(None, m, pixel_feature=outputs["pixel_feature"]) for m in memories
        ]
        if self.training and self.semantic_head is not None:
            if c.extra_decoder_num_stacks:
                semantic_feature = high_resolution[c.backbone_decoder_num_stacks]
                outputs["semantic_logits"] = self.semantic_head(semantic_feature, [])
            else:
                lows = [self.act(endpoints["stage3"]), self.act(endpoints["stage2"])]
                outputs["semantic_logits"] = self.semantic_head(backbone_output, lows)
        if return_maps:
            outputs["maps"] = state.maps
        return outputs

    def _predict(
        self, feature_panoptic: torch.Tensor | None, memory: torch.Tensor,
        pixel_feature: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.predictor(
            feature_panoptic, self.class_feature(memory), self.mask_feature(memory), pixel_feature
        )


class _RecordingDualPath(DualPathTransformerLayer):
    """A dual-path layer that also records its output memory for deep supervision."""

    def forward(self, pixels, memory, state=None):  # noqa: D102
        pixels, memory = super().forward(pixels, memory, state)
        if state is not None:
            state.extras.setdefault("memories", []).append(memory)
        return pixels, memory


# --- Variants ------------------------------------------------------------------------------


@register_model("max-deeplab-s", MaXDeepLabConfig, "MaX-S (Axial-R50 + transformers)", "61.9M",
                "MaX-DeepLab-S baseline, dual-path transformer")
def max_deeplab_s(**kwargs: Any) -> MaXDeepLab:
    return MaXDeepLab(MaXDeepLabConfig(**kwargs))


@register_model("max-deeplab-l", MaXDeepLabConfig, "MaX-L (wide-ResNet-41 + axial)", "451M",
                "MaX-DeepLab-L, stacked decoder")
def max_deeplab_l(**kwargs: Any) -> MaXDeepLab:
    defaults = {
        "num_blocks": (3, 6, 3, 3), "backbone_type": "wider_resnet",
        "backbone_transformer_beyond_stride": 16, "extra_decoder_transformer_beyond_stride": 16,
        "backbone_decoder_num_stacks": 1, "extra_decoder_num_stacks": 1,
        "extra_decoder_blocks_per_stage": 3, "memory_channels": 512,
        "base_transformer_expansion": 2.0, "global_ffn_channels": 512,
        "attention_bottleneck_expansion": 4, "key_expansion": 2.0, "value_expansion": 4.0,
        "drop_path_beyond_stride": 4,
    }
    return MaXDeepLab(MaXDeepLabConfig(**{**defaults, **kwargs}))


@register_model("max-deeplab-tiny", MaXDeepLabConfig, "MaX (x0.25)", "-",
                "MaX-DeepLab at tiny widths: the baseline for the tiny CMT")
def max_deeplab_tiny(**kwargs: Any) -> MaXDeepLab:
    defaults = {
        "num_blocks": (1, 1, 2, 1), "width_multiplier": 0.25, "stem_width_multiplier": 0.25,
        "num_heads": 4, "memory_channels": 128, "base_transformer_expansion": 0.25,
        "global_ffn_channels": 64, "transformer_ffn_channels": 256, "pixel_feature_dim": 32,
        "drop_path_keep_prob": 1.0, "semantic_channels": 48, "semantic_projections": (16, 8),
    }
    return MaXDeepLab(MaXDeepLabConfig(**{**defaults, **kwargs}))
