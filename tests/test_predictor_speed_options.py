"""Predictor speed options: the inference copy (BN folding, channels-last), autocast precision,
``torch.compile`` with its eager fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cmt_deeplab
from _fakes import INFO, scene
from cmt_deeplab.inference.predictor import Predictor

_ZERO_THRESHOLDS = {"class_threshold": 0.0, "pixel_threshold": 0.0, "thing_area_limit": 0,
                    "stuff_area_limit": 0}


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=INFO.num_classes,
                                    num_thing_classes=INFO.num_thing_classes).eval()
    # Non-trivial running statistics, so that folding them changes the weights.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0.0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model


def _raw_outputs(predictor: Predictor, image: np.ndarray) -> dict[str, torch.Tensor]:
    batch = predictor.preprocess(image)[0][None]
    if predictor.channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return predictor._run(batch)


def test_optimized_copy_matches_the_model_and_leaves_it_alone() -> None:
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = Predictor(model, INFO, size=65, device="cpu", optimize=False, **_ZERO_THRESHOLDS)
    fast = Predictor(model, INFO, size=65, device="cpu", **_ZERO_THRESHOLDS)
    assert fast.model is not model and plain.model is model
    # The caller's model is untouched: same keys (no BN folded away), same values.
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    image = scene(45, 70)
    expected, actual = _raw_outputs(plain, image), _raw_outputs(fast, image)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(actual[key], expected[key], atol=1e-4, rtol=1e-4)
    assert (plain(image).panoptic == fast(image).panoptic).mean() > 0.999


def test_inplace_folds_the_callers_model() -> None:
    model = _tiny_model()
    count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    predictor = Predictor(model, INFO, size=65, device="cpu", inplace=True)
    assert predictor.model is model
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) < count


def test_bf16_autocast_returns_float32_close_to_fp32() -> None:
    model = _tiny_model()
    fp32 = Predictor(model, INFO, size=65, device="cpu", **_ZERO_THRESHOLDS)
    bf16 = Predictor(model, INFO, size=65, device="cpu", precision="bf16", **_ZERO_THRESHOLDS)
    image = scene(45, 70)
    expected, actual = _raw_outputs(fp32, image), _raw_outputs(bf16, image)
    assert actual["pred_masks"].dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: the logits agree to a few percent of their range.
    scale = expected["pred_masks"].abs().max()
    assert (actual["pred_masks"] - expected["pred_masks"]).abs().max() < 0.1 * scale
    result = bf16(image)
    assert result.panoptic.shape == (45, 70)


def test_bad_precision_is_an_error() -> None:
    model = _tiny_model()
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        Predictor(model, INFO, size=33, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        Predictor(model, INFO, size=33, device="cpu", precision="fp16")


def test_failed_compile_warns_and_runs_eagerly(monkeypatch) -> None:
    calls = []

    def broken_compile(model, **kwargs):
        def compiled(batch):
            calls.append(batch.shape)
            raise RuntimeError("no working C++ compiler\nlong backend trace ...")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = _tiny_model()
    eager = Predictor(model, INFO, size=65, device="cpu", **_ZERO_THRESHOLDS)
    predictor = Predictor(model, INFO, size=65, device="cpu", compile=True, **_ZERO_THRESHOLDS)
    image = scene(45, 70)
    with pytest.warns(UserWarning, match="torch.compile failed .*no working C.. compiler.*eager"):
        first = predictor(image).panoptic
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later batches run eagerly without trying
        second = predictor(image).panoptic
    assert len(calls) == 1
    np.testing.assert_array_equal(first, eager(image).panoptic)
    np.testing.assert_array_equal(second, first)


@pytest.mark.slow
def test_compiled_model_matches_eager() -> None:
    model = _tiny_model()
    eager = Predictor(model, INFO, size=65, device="cpu", **_ZERO_THRESHOLDS)
    compiled = Predictor(model, INFO, size=65, device="cpu", compile=True, **_ZERO_THRESHOLDS)
    image = scene(45, 70)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback would warn: compile must work
        actual = _raw_outputs(compiled, image)
    expected = _raw_outputs(eager, image)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(actual[key], expected[key], atol=1e-4, rtol=1e-4)
