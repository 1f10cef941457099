"""Models: pixel encoders, pixel decoders, transformer layers, heads and the zoo."""

from cmt_deeplab.models.cmt_deeplab import CMTDeepLab, CMTDeepLabConfig, DecoderStage
from cmt_deeplab.models.layers.recompute import RECOMPUTE_MODES, set_recompute
from cmt_deeplab.models.max_deeplab import MaXDeepLab, MaXDeepLabConfig
from cmt_deeplab.models.meta_arch import check_images, count_parameters, normalize_images
from cmt_deeplab.models.registry import (
    ModelSpec,
    attach_model_spec,
    build_model,
    list_models,
    model_entry,
    model_spec,
    register_model,
)
from cmt_deeplab.models.rfn import RecursiveCMTDeepLab

__all__ = [
    "RECOMPUTE_MODES", "CMTDeepLab", "CMTDeepLabConfig", "DecoderStage", "MaXDeepLab",
    "MaXDeepLabConfig", "ModelSpec", "RecursiveCMTDeepLab", "attach_model_spec", "build_model",
    "check_images", "count_parameters", "list_models", "model_entry", "model_spec",
    "normalize_images", "register_model", "set_recompute",
]
