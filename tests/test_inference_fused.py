"""The inference copy's fused paths (``inference.fast``): no aux outputs, the CMT pixel update's
BN on the centre values, the clustering update's value BN folded into its projection, the
pixel head's feature BN folded, the memory attention's logit BN as a scale on q. The eval
outputs are as close to a float64 run of the module as the fp32 module itself is (within 4x
its own rounding error: with randomised BNs a deep net amplifies fp32 rounding to ~1e-4 of
the output scale, folding alone included), and the panoptic maps are identical."""

from __future__ import annotations

import copy

import pytest
import torch

from _small_models import SMALL, small_model
from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.synthetic import synthetic_categories
from cmt_deeplab.inference.fast import optimize_for_inference
from cmt_deeplab.inference.post_processing import pixelwise_panoptic
from cmt_deeplab.models.layers.block_group import TransformerState
from cmt_deeplab.models.transformer.cmt_layer import ClusteringMaskTransformerLayer

#: As many categories as the small builds have classes.
INFO = DatasetInfo(synthetic_categories()[: SMALL["num_classes"]], label_divisor=256)


def _randomize_batchnorms(model: torch.nn.Module) -> None:
    """Every BN away from its initial (often zero-gamma) state, so that each fold matters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                shape = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))


def _error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's scale."""
    reference = reference.double()
    return ((actual.double() - reference).abs().max() / reference.abs().max()).item()


def _check_rounding(fast, plain, reference) -> None:
    """``fast`` is within fp32 rounding: no farther from the float64 ``reference`` than 4x
    the plain fp32 output is (and 1e-6 of the scale at least)."""
    own = _error(plain, reference)
    assert _error(fast, reference) <= max(4 * own, 1e-6), (_error(fast, reference), own)


@pytest.mark.parametrize("name", ["cmt-deeplab-tiny", "max-deeplab-tiny", "cmt-deeplab-l-rfn"])
def test_inference_copy_matches_the_module(name):
    torch.manual_seed(0)
    model = small_model(name)
    _randomize_batchnorms(model)
    model.eval()
    images = torch.randn(1, 3, 65, 81)
    with torch.inference_mode():
        expected = model(images)
        fast = optimize_for_inference(model)
        actual = fast(images)
        reference = copy.deepcopy(model).double()(images.double())
    assert expected["aux_outputs"], "the module keeps its deep-supervision outputs"
    assert actual["aux_outputs"] == [], "the inference copy leaves them out"
    for key in ("pred_logits", "pred_masks", "pixel_feature"):
        _check_rounding(actual[key], expected[key], reference[key])
    if name.startswith("cmt"):
        layers = [m for m in fast.modules() if isinstance(m, ClusteringMaskTransformerLayer)]
        assert layers and all(layer.fused_inference for layer in layers)
    maps = [pixelwise_panoptic(out["pred_logits"][0], out["pred_masks"][0], INFO, (65, 81),
                               class_threshold=0.0, thing_area_limit=0, stuff_area_limit=0)
            for out in (expected, actual)]
    assert (maps[0].panoptic == maps[1].panoptic).all()
    assert len(set(maps[0].panoptic.flatten().tolist())) > 1, "a map with segments"


@pytest.mark.parametrize("batch, channels_last", [(1, False), (2, True)])
def test_fused_cmt_layer_matches_the_plain_layer(batch, channels_last):
    """One CMT layer with a previous mask (the residual path) and every fold in use, on
    NCHW and on channels-last pixels (the per-image convolutions of the fused path), with
    its clustering and attention maps."""
    torch.manual_seed(0)
    layer = ClusteringMaskTransformerLayer(32, 7, 64, 16, num_heads=4, ffn_channels=64,
                                           pixel_feature_dim=16, head_channels=32)
    _randomize_batchnorms(layer)
    layer.eval()
    pixels, centers = torch.randn(batch, 32, 9, 11), torch.randn(batch, 16, 64)
    previous = torch.randn(batch, 16, 5, 6)

    def state(prev: torch.Tensor) -> TransformerState:
        return TransformerState(prev, return_maps=True)

    with torch.inference_mode():
        expected_state, actual_state, reference_state = state(previous), state(previous), state(
            previous.double())
        expected_pixels, expected_centers = layer(pixels, centers, expected_state)
        fast = optimize_for_inference(layer, channels_last=channels_last)
        fast_pixels = pixels.contiguous(memory_format=torch.channels_last) if channels_last \
            else pixels
        actual_pixels, actual_centers = fast(fast_pixels, centers, actual_state)
        reference = copy.deepcopy(layer).double()(pixels.double(), centers.double(),
                                                  reference_state)
    _check_rounding(actual_pixels, expected_pixels, reference[0])
    _check_rounding(actual_centers, expected_centers, reference[1])
    for key in ("clustering", "attention"):
        _check_rounding(actual_state.maps[0][key], expected_state.maps[0][key],
                        reference_state.maps[0][key])
