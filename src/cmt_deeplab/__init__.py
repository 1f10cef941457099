"""cmt-deeplab: CMT-DeepLab and MaX-DeepLab panoptic segmentation in PyTorch."""

from cmt_deeplab.model_dir import load_model
from cmt_deeplab.models import count_parameters, list_models, normalize_images
from cmt_deeplab.pretrained import build_model, load_pretrained

__version__ = "0.1.0"
__all__ = ["build_model", "count_parameters", "list_models", "load_model", "load_pretrained",
           "normalize_images", "__version__"]
