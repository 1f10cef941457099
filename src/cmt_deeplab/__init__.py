"""cmt-deeplab: CMT-DeepLab and MaX-DeepLab panoptic segmentation in PyTorch."""

from cmt_deeplab.models import build_model, count_parameters, list_models, normalize_images

__version__ = "0.1.0"
__all__ = ["build_model", "count_parameters", "list_models", "load_model", "normalize_images",
           "__version__"]


def load_model(path, device=None):
    """The model of a model directory (``model.safetensors`` + ``config.yaml``: a training
    run's output, a converted checkpoint, a training-state step), in eval mode."""
    from cmt_deeplab.engine.checkpoint import load_model_dir

    return load_model_dir(path, device)[0]
