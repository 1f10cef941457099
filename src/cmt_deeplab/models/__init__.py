"""Models: pixel encoders, pixel decoders, transformer layers, heads and the zoo."""

from cmt_deeplab.models.cmt_deeplab import CMTDeepLab, CMTDeepLabConfig, DecoderStage
from cmt_deeplab.models.layers.recompute import RECOMPUTE_MODES, set_recompute
from cmt_deeplab.models.max_deeplab import MaXDeepLab, MaXDeepLabConfig
from cmt_deeplab.models.meta_arch import check_images, count_parameters, normalize_images
from cmt_deeplab.models.registry import build_model, list_models, model_entry, register_model
from cmt_deeplab.models.rfn import RecursiveCMTDeepLab

__all__ = [
    "RECOMPUTE_MODES", "CMTDeepLab", "CMTDeepLabConfig", "DecoderStage", "MaXDeepLab",
    "MaXDeepLabConfig", "RecursiveCMTDeepLab", "build_model", "check_images", "count_parameters",
    "list_models", "model_entry", "normalize_images", "register_model", "set_recompute",
]
