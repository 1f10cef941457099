"""cmt-deeplab: CMT-DeepLab and MaX-DeepLab panoptic segmentation in PyTorch."""

from cmt_deeplab.model_dir import load_model
from cmt_deeplab.models import build_model, count_parameters, list_models, normalize_images

__version__ = "0.1.0"
__all__ = ["build_model", "count_parameters", "list_models", "load_model", "normalize_images",
           "__version__"]
