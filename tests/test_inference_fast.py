"""Inference rewrites (folded BN, channels-last) keep the outputs within 1e-4."""

from __future__ import annotations

import pytest
import torch

import cmt_deeplab
from cmt_deeplab.inference.fast import fold_batchnorm, optimize_for_inference
from cmt_deeplab.models import count_parameters


@pytest.mark.parametrize("name", ["cmt-deeplab-tiny", "max-deeplab-tiny"])
def test_optimized_model_matches_reference(name):
    torch.manual_seed(0)
    model = cmt_deeplab.build_model(name, num_slots=16).train()
    with torch.no_grad():  # running statistics away from their initial values
        for _ in range(3):
            model(torch.randn(2, 3, 65, 65))
    model.eval()
    params = count_parameters(model)
    images = torch.randn(2, 3, 65, 81)
    with torch.no_grad():
        expected = model(images)
        fast = optimize_for_inference(model)
        actual = fast(images)
    for key in ("pred_logits", "pred_masks", "pixel_feature"):
        torch.testing.assert_close(actual[key], expected[key], atol=1e-4, rtol=1e-4)
    assert count_parameters(model) == params, "the original model is left untouched"


def test_fold_batchnorm_removes_every_foldable_bn():
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_slots=8).eval()
    before = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    folded = fold_batchnorm(model)
    after = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert folded > 50 and after == before - folded
