"""Inference: panoptic post-processing (pixel-wise / mask-wise) and the image Predictor."""

from cmt_deeplab.inference.post_processing import (
    POST_PROCESSORS,
    default_area_limits,
    maskwise_panoptic,
    pixelwise_panoptic,
)
from cmt_deeplab.inference.predictor import Predictor, to_rgb_array
from cmt_deeplab.inference.result import PanopticResult

__all__ = [
    "POST_PROCESSORS",
    "PanopticResult",
    "Predictor",
    "default_area_limits",
    "maskwise_panoptic",
    "pixelwise_panoptic",
    "to_rgb_array",
]
