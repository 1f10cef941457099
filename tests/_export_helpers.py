"""Shared by the export tests: small models whose random predictions are confident, saved as
model directories, and the parity numbers of an exported graph against PyTorch eager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _small_models import SMALL, small_model
from cmt_deeplab.data.metadata import Category, DatasetInfo
from cmt_deeplab.model_dir import save_model_dir

#: Categories of the small builds (3 things, 4 stuff; ids not contiguous).
INFO = DatasetInfo([Category(10 * (i + 1), f"class{i}", i < SMALL["num_thing_classes"])
                    for i in range(SMALL["num_classes"])])
#: Input size of the exported test graphs.
EXPORT_SIZE = 65
#: Parity bounds: logit differences relative to the largest logit (the sharpened heads of
#: ``confident_model`` give class logits in the hundreds), and the panoptic agreement.
MAX_RELATIVE_LOGIT_DIFF = 1e-5
MIN_PIXEL_AGREEMENT = 0.999


def require_onnxruntime() -> None:
    """Skips (with the reason) where the optional ``[export]`` extra is not installed."""
    for module in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed: the export tests need "
                                           "the [export] extra (pip install '.[export]')")


def confident_model(name: str, seed: int = 0) -> nn.Module:
    """``name`` at test width, in eval mode, with sharp class and mask logits: a random model
    keeps no slot at the default thresholds, so its panoptic maps would all be void."""
    torch.manual_seed(seed)
    model = small_model(name).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "class_head") and hasattr(module, "mask_bn"):
                fan_in = module.class_head.weight.shape[1]
                module.class_head.weight.normal_(0.0, 1000.0 / fan_in**0.5)
                module.mask_bn.weight.fill_(10.0)
    return model


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """``[B, 3, H, W]`` in the models' input range with blobs rather than pixel noise, so that
    the random models' maps have several segments."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, 3, height, width, generator=generator)
    return (F.avg_pool2d(noise, 9, 1, 4) * 3).clamp(-1, 1)


def save_checkpoint(model: nn.Module, directory: Path, size: int = 65) -> Path:
    return save_model_dir(directory, model, {"data": INFO.to_dict(),
                                             "input": {"crop": [size, size]}})


def logit_diffs(outputs: dict[str, torch.Tensor],
                reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Max absolute differences of the class logits and of the mask logits."""
    return tuple(float((outputs[key].float() - reference[key].float()).abs().max())
                 for key in ("pred_logits", "pred_masks"))


def assert_logits_close(outputs: dict[str, torch.Tensor],
                        reference: dict[str, torch.Tensor]) -> None:
    """Class and mask logits within ``MAX_RELATIVE_LOGIT_DIFF`` of the largest |logit| (>= 1)."""
    for key, diff in zip(("pred_logits", "pred_masks"), logit_diffs(outputs, reference),
                         strict=True):
        scale = max(1.0, float(reference[key].abs().max()))
        assert diff <= MAX_RELATIVE_LOGIT_DIFF * scale, f"{key}: max abs diff {diff:.3g} at " \
                                                        f"largest |logit| {scale:.3g}"
