"""CMT-DeepLab: a pixel encoder, a pixel decoder of stacked residual blocks with a Clustering
Mask Transformer layer after each decoder block, and MaX-DeepLab's prediction head.

Layout "R-A" of the fact sheet (§5.2, reconstructed and fitted to the paper's 94.9M / 396G):
the MaX-S backbone without its transformers (Axial-R50 at output stride 16), then

| stage | stride | content                                              | CMT layers |
|-------|--------|------------------------------------------------------|-----------|
| D1    | 16     | 2 axial blocks f=512 on LN(stage5), 2048 ch           | 2 (C_p 2048) |
| D2    | 16     | fuse(D1, LN(stage4)) -> 256; 6 axial blocks f=256      | 6 (C_p 1024) |
| D3    | 8      | fuse(D2, LN(stage3)) -> 128; 1 bottleneck f=128        | 1 (C_p 512) |
| D4    | 4      | fuse(D3, LN(stage2)) -> 64; 1 bottleneck f=64 -> act   | -         |

128 cluster centres of 256 channels; after the last layer, class and mask embeddings
(linear + BN + act) and the MaX head on the stride-4 feature. Every CMT layer also predicts
(deep supervision); its masks and pixel features are resized to the final resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.backbones import AXIAL_R104_BLOCKS, build_backbone
from cmt_deeplab.models.heads.prediction_head import PredictionHead
from cmt_deeplab.models.heads.semantic_head import SemanticHead
from cmt_deeplab.models.layers.block_group import BlockGroup, BlockSettings, TransformerState
from cmt_deeplab.models.layers.norm_act import LayerNorm2d, LinearBN, get_activation
from cmt_deeplab.models.layers.resized_fuse import ResizedFuse, resize_bilinear
from cmt_deeplab.models.meta_arch import SlotTable, check_images
from cmt_deeplab.models.registry import register_model
from cmt_deeplab.models.transformer.cmt_layer import ClusteringMaskTransformerLayer


@dataclass(frozen=True)
class DecoderStage:
    """One decoder stage: fuse to ``fuse_channels`` (0 = take LN(stage5) as is), then
    ``num_blocks`` residual blocks of base width ``filters`` (output 4 x filters), each
    followed by a CMT layer when ``clustering`` is set."""

    stride: int
    fuse_channels: int
    num_blocks: int
    filters: int
    clustering: bool


#: The R-A layout (fact sheet §5.2).
DEFAULT_DECODER = (
    DecoderStage(16, 0, 2, 512, True),
    DecoderStage(16, 256, 6, 256, True),
    DecoderStage(8, 128, 1, 128, True),
    DecoderStage(4, 64, 1, 64, False),
)

_STAGE_AT_STRIDE = {2: "stage1", 4: "stage2", 8: "stage3", 16: "stage4", 32: "stage5"}


@dataclass
class CMTDeepLabConfig(BlockSettings):
    """Every number of a CMT-DeepLab variant (defaults: CMT-DeepLab-S, Axial-R50, COCO).

    The residual-block settings (``output_stride``, drop path, activation, axial attention
    widths) come from ``BlockSettings``.
    """

    num_classes: int = 133
    num_thing_classes: int = 80
    num_slots: int = 128
    max_num_slots: int = 128
    # Pixel encoder: a name registered with ``register_backbone``.
    backbone_type: str = "resnet_beta"
    backbone_num_blocks: tuple[int, int, int, int] = (3, 4, 6, 3)
    backbone_use_axial_beyond_stride: int = 16
    width_multiplier: float = 1.0
    stem_width_multiplier: float = 1.0
    # Pixel decoder.
    decoder: tuple[DecoderStage, ...] = DEFAULT_DECODER
    decoder_use_axial_beyond_stride: int = 16
    use_skip_layernorm: bool = True
    # Cluster centres and CMT layers.
    memory_channels: int = 256
    transformer_filters: int = 128
    num_heads: int = 8
    transformer_ffn_channels: int = 2048
    embedding_channels: int = 256
    pixel_feature_dim: int = 128
    head_channels: int = 256
    use_clustering_update: bool = True
    use_pixel_update: bool = True
    use_residual_assignment: bool = True
    use_reference_mask: bool = True
    use_coord_conv: bool = True
    detach_assignment: bool = False
    normalize_cluster_mass: bool = False
    # Heads of the axial blocks (``num_heads`` is the CMT layers').
    axial_num_heads: int = 8
    # Regularisation and the rest.
    drop_path_keep_prob: float = 0.8  # BlockSettings' default is 1.0
    use_semantic_head: bool = True
    semantic_channels: int = 256
    semantic_projections: tuple[int, int] = (64, 32)

    def __post_init__(self) -> None:
        # Read from YAML or JSON (checkpoint configs), stages arrive as dicts or lists.
        self.decoder = tuple(
            s if isinstance(s, DecoderStage) else DecoderStage(**s) if isinstance(s, dict)
            else DecoderStage(*s) for s in self.decoder
        )
        self.backbone_num_blocks = tuple(self.backbone_num_blocks)
        self.semantic_projections = tuple(self.semantic_projections)


class CMTDeepLab(nn.Module):
    """``model(images) -> outputs`` (contract in :mod:`cmt_deeplab.models.meta_arch`)."""

    def __init__(self, config: CMTDeepLabConfig, own_centers: bool = True) -> None:
        super().__init__()
        self.config = c = config
        self.act = get_activation(c.activation)
        self.backbone = build_backbone(
            c.backbone_type, num_blocks=c.backbone_num_blocks,
            config=c.block_config(c.backbone_use_axial_beyond_stride, c.axial_num_heads),
            width_multiplier=c.width_multiplier, stem_width_multiplier=c.stem_width_multiplier,
        )
        # The decoder's blocks are bottleneck / axial whatever the encoder's type.
        decoder_blocks = c.block_config(c.decoder_use_axial_beyond_stride, c.axial_num_heads)
        channels = self.backbone.stage_channels
        skip_names = ["stage5"] + [_STAGE_AT_STRIDE[s.stride] for s in c.decoder if s.fuse_channels]
        self.skip_norms = nn.ModuleDict(
            {n: LayerNorm2d(channels[n]) if c.use_skip_layernorm else nn.Identity() for n in skip_names}
        )
        transformer = partial(self._make_layer, c)
        self.fuses = nn.ModuleList()
        self.decoder_stages = nn.ModuleList()
        current = channels["stage5"]
        for stage in c.decoder:
            if stage.fuse_channels:
                skip = channels[_STAGE_AT_STRIDE[stage.stride]]
                self.fuses.append(ResizedFuse([current, skip], stage.fuse_channels, c.activation))
                current = stage.fuse_channels
            else:
                self.fuses.append(nn.Identity())
            original_input_stride = 32 if stage.stride == c.output_stride else stage.stride
            group = BlockGroup(
                current, stage.filters, stage.num_blocks, 1, original_input_stride,
                decoder_blocks, 1 if stage.clustering else 0, transformer,
            )
            self.decoder_stages.append(group)
            current = group.out_channels
        self.panoptic_channels = current
        # False (an inference copy, ``inference.fast``): no per-layer predictions; only the
        # deep-supervision losses read them.
        self.return_aux_outputs = True
        self.num_layers = sum(s.num_blocks for s in c.decoder if s.clustering)

        self.centers = SlotTable(c.num_slots, c.memory_channels, c.max_num_slots) if own_centers else None
        self.class_embedding = LinearBN(c.memory_channels, c.embedding_channels, c.activation)
        self.mask_embedding = LinearBN(c.memory_channels, c.embedding_channels, c.activation)
        self.predictor = PredictionHead(
            c.num_classes, current, c.embedding_channels, c.pixel_feature_dim, c.head_channels,
            activation=c.activation,
        )
        self.semantic_head = (
            SemanticHead(c.num_classes, channels["stage5"], (channels["stage3"], channels["stage2"]),
                         tuple(c.semantic_projections), c.semantic_channels, c.activation)
            if c.use_semantic_head else None
        )

    @staticmethod
    def _make_layer(
        c: CMTDeepLabConfig, pixel_channels: int, keep_prob: float, expansion: float
    ) -> nn.Module:
        del expansion  # CMT layers keep one width at every stride
        return ClusteringMaskTransformerLayer(
            pixel_channels, c.num_classes, c.memory_channels, c.transformer_filters, c.num_heads,
            ffn_channels=c.transformer_ffn_channels, pixel_feature_dim=c.pixel_feature_dim,
            head_channels=c.head_channels, use_clustering_update=c.use_clustering_update,
            use_pixel_update=c.use_pixel_update, use_residual_assignment=c.use_residual_assignment,
            use_reference_mask=c.use_reference_mask, use_coord_conv=c.use_coord_conv,
            detach_assignment=c.detach_assignment, normalize_cluster_mass=c.normalize_cluster_mass,
            drop_path_keep_prob=keep_prob, activation=c.activation,
        )

    def forward_features(
        self,
        images: torch.Tensor,
        centers: torch.Tensor,
        state: TransformerState,
        feedback: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encoder + decoder with the CMT layers; returns the final centres, the stride-4
        decoder tensor (non-activated, for RFN) and the backbone endpoints."""
        endpoints, _ = self.backbone(images, feedback=feedback)
        x = self.skip_norms["stage5"](endpoints["stage5"])
        for stage, fuse, group in zip(self.config.decoder, self.fuses, self.decoder_stages, strict=True):
            if not isinstance(fuse, nn.Identity):
                name = _STAGE_AT_STRIDE[stage.stride]
                skip = self.skip_norms[name](endpoints[name])
                x = fuse([x, skip], tuple(skip.shape[-2:]))
            x, centers = group(x, centers, state)
        return {"decoder_output": x, "centers": centers, "endpoints": endpoints}

    def predict(
        self, features: dict[str, torch.Tensor], state: TransformerState
    ) -> dict:
        """Final prediction and per-layer auxiliary predictions at the final resolution."""
        centers = features["centers"]
        outputs = self.predictor(
            self.act(features["decoder_output"]), self.class_embedding(centers),
            self.mask_embedding(centers),
        )
        size = tuple(outputs["pred_masks"].shape[-2:])
        outputs["aux_outputs"] = [_resize_prediction(p, size) for p in state.aux_outputs]
        return outputs

    def forward(self, images: torch.Tensor, return_maps: bool = False) -> dict:
        check_images(images)
        state = TransformerState(return_maps=return_maps, record_aux=self.return_aux_outputs)
        features = self.forward_features(images, self.centers(images.shape[0]), state)
        outputs = self.predict(features, state)
        if self.training and self.semantic_head is not None:
            outputs["semantic_logits"] = self.semantic_logits(features["endpoints"])
        if return_maps:
            outputs["maps"] = state.maps
        return outputs

    def semantic_logits(self, endpoints: dict[str, torch.Tensor]) -> torch.Tensor:
        lows = [self.act(endpoints["stage3"]), self.act(endpoints["stage2"])]
        return self.semantic_head(self.act(endpoints["stage5"]), lows)


def _resize_prediction(prediction: dict[str, torch.Tensor], size: tuple[int, int]) -> dict:
    """Brings a layer's masks and pixel features to the final mask resolution."""
    out = dict(prediction)
    if tuple(prediction["pred_masks"].shape[-2:]) != size:
        out["pred_masks"] = resize_bilinear(prediction["pred_masks"], size)
        out["pixel_feature"] = F.normalize(resize_bilinear(prediction["pixel_feature"], size), dim=1)
    return out


# --- Variants ------------------------------------------------------------------------------

#: CMT-DeepLab-L: the Axial-R104 encoder (four times the stage-4 blocks of Axial-R50).
L_DEFAULTS: dict[str, Any] = {"backbone_num_blocks": AXIAL_R104_BLOCKS}

#: The tiny variant: the same code path at small widths and depths, trainable on a CPU.
TINY_DEFAULTS: dict[str, Any] = {
    "backbone_num_blocks": (1, 1, 2, 1),
    "width_multiplier": 0.25,
    "stem_width_multiplier": 0.25,
    "axial_num_heads": 4,
    "decoder": (
        DecoderStage(16, 0, 1, 64, True),
        DecoderStage(16, 64, 1, 32, True),
        DecoderStage(8, 32, 1, 16, True),
        DecoderStage(4, 16, 1, 16, False),
    ),
    "memory_channels": 128,
    "transformer_filters": 32,
    "num_heads": 4,
    "transformer_ffn_channels": 256,
    "embedding_channels": 64,
    "pixel_feature_dim": 32,
    "head_channels": 64,
    "drop_path_keep_prob": 1.0,
    "semantic_channels": 48,
    "semantic_projections": (16, 8),
}


@register_model("cmt-deeplab-s", CMTDeepLabConfig, "Axial-R50", "94.9M",
                "CMT-DeepLab, 9 CMT layers (reconstructed layout R-A)")
def cmt_deeplab_s(**kwargs: Any) -> CMTDeepLab:
    return CMTDeepLab(CMTDeepLabConfig(**kwargs))


@register_model("cmt-deeplab-l", CMTDeepLabConfig, "Axial-R104", "135.2M",
                "CMT-DeepLab, 4x stage-4 blocks")
def cmt_deeplab_l(**kwargs: Any) -> CMTDeepLab:
    return CMTDeepLab(CMTDeepLabConfig(**{**L_DEFAULTS, **kwargs}))


@register_model("cmt-deeplab-r50", CMTDeepLabConfig, "ResNet-50 (deeplab2)", "-",
                "CMT head on a plain ResNet-50 (Table 3); ours: 76,983,108")
def cmt_deeplab_r50(**kwargs: Any) -> CMTDeepLab:
    defaults = {"backbone_type": "resnet", "backbone_use_axial_beyond_stride": 0,
                "drop_path_keep_prob": 1.0}
    return CMTDeepLab(CMTDeepLabConfig(**{**defaults, **kwargs}))


@register_model("cmt-deeplab-tiny", CMTDeepLabConfig, "Axial-ResNet (x0.25, 5 blocks)", "-",
                "same code path, CPU-trainable; demo and tests")
def cmt_deeplab_tiny(**kwargs: Any) -> CMTDeepLab:
    return CMTDeepLab(CMTDeepLabConfig(**{**TINY_DEFAULTS, **kwargs}))
