"""The bf16 inference path: loads a float32 checkpoint, keeps its BN-folded conv / linear
weights in bf16 but for the parts that stay float32 (the CMT layers' reference-mask heads),
and gives the same panoptic maps as float32 on nearly every pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from _export_helpers import INFO, confident_model, save_checkpoint, smooth_images
from cmt_deeplab.inference.predictor import Predictor
from cmt_deeplab.model_dir import read_safetensors
from cmt_deeplab.models.layers.float32 import float32_modules
from cmt_deeplab.models.transformer.cmt_layer import ReferenceMaskHead

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
    kept = float32_modules(bf16.model)
    layers = [m for m in bf16.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(m.weight.dtype == torch.bfloat16 for m in layers if m not in kept)
    assert all(p.dtype == torch.float32 for m in kept for p in m.parameters())
    assert bool(kept) == name.startswith("cmt")  # MaX has no reference masks
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


def test_bf16_keeps_the_reference_masks_and_the_assignment_in_float32() -> None:
    predictor = Predictor(confident_model("cmt-deeplab-s"), INFO, size=SIZE, device="cpu",
                          precision="bf16")
    heads = [m for m in predictor.model.modules() if isinstance(m, ReferenceMaskHead)]
    assert heads and all(p.dtype == torch.float32 for h in heads for p in h.parameters())
    outputs: list[torch.Tensor] = []
    for head in heads:
        head.register_forward_hook(lambda module, args, result: outputs.extend(result))
    images = smooth_images(1, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = predictor.model(images, return_maps=True)
    assert len(outputs) == 2 * len(heads)
    assert all(tensor.dtype == torch.float32 for tensor in outputs)  # mu, sigma
    # The soft assignment (softmax over the centres of the assignment logits) is float32 ...
    assert all(maps["clustering"].dtype == torch.float32 for maps in result["maps"])
    # ... while the rest runs in bf16: the final mask logits come out of a bf16 product.
    assert result["pred_masks"].dtype == torch.bfloat16


def test_reference_mask_head_under_autocast_equals_float32() -> None:
    torch.manual_seed(0)
    head = ReferenceMaskHead(16).eval()
    centers = torch.randn(2, 5, 16)
    expected = head(centers)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        from_float32 = head(centers)
        from_bf16 = head(centers.bfloat16())
    for actual, wanted in zip(from_float32, expected, strict=True):
        assert actual.dtype == torch.float32 and torch.equal(actual, wanted)
    for actual, wanted in zip(from_bf16, expected, strict=True):
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual, wanted, rtol=2e-2, atol=1e-2)
    # Outside autocast nothing is cast: a float64 reference run stays float64.
    assert all(t.dtype == torch.float64 for t in head.double()(centers.double()))
