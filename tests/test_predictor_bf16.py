"""The bf16 inference path: loads a float32 checkpoint, keeps its BN-folded conv / linear
weights in bf16, and gives the same panoptic maps as float32 on nearly every pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from _export_helpers import INFO, confident_model, save_checkpoint, smooth_images
from cmt_deeplab.inference.predictor import Predictor
from cmt_deeplab.model_dir import read_safetensors

SIZE = 65


def _images(count: int) -> list[np.ndarray]:
    """Smooth ``[H, W, 3]`` uint8 images, so the maps have several segments."""
    batch = smooth_images(count, SIZE, SIZE, seed=3)
    return [((image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
            for image in batch]


@pytest.mark.parametrize("name", ["cmt-deeplab-s",
                                  pytest.param("max-deeplab-s", marks=pytest.mark.slow)])
def test_bf16_loads_a_float32_checkpoint_and_agrees_with_float32(tmp_path, name) -> None:
    directory = save_checkpoint(confident_model(name), tmp_path / "model", size=SIZE)
    stored = read_safetensors(directory / "model.safetensors")
    assert {tensor.dtype for tensor in stored.values() if tensor.is_floating_point()} == {
        torch.float32}
    fp32 = Predictor.from_checkpoint(directory, device="cpu")
    bf16 = Predictor.from_checkpoint(directory, device="cpu", precision="bf16")
    layers = [m for m in bf16.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(m.weight.dtype == torch.bfloat16 for m in layers)
    # Norms stay float32 (autocast runs them in float32).
    norms = [m for m in bf16.model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))]
    assert all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    agreement, segments = [], 0
    for image in _images(4):
        expected, actual = fp32(image), bf16(image)
        segments += len(expected.segments_info)
        agreement.append((actual.panoptic == expected.panoptic).mean())
    assert segments > 4, "the maps should have segments to compare"
    assert np.mean(agreement) >= 0.99


def test_float32_predictor_keeps_float32_weights() -> None:
    model = confident_model("cmt-deeplab-s")
    predictor = Predictor(model, INFO, size=SIZE, device="cpu")
    assert all(p.dtype == torch.float32 for p in predictor.model.parameters())
    # The caller's model is not cast by a bf16 inference copy either.
    Predictor(model, INFO, size=SIZE, device="cpu", precision="bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
