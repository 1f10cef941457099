"""Activation recompute (``models/layers/recompute.py``): the same gradients, the same random
masks, BatchNorm statistics updated once, fewer saved activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from cmt_deeplab.engine.config import TrainConfig
from cmt_deeplab.models import build_model, set_recompute
from cmt_deeplab.models.layers.blocks import ResidualBlock
from cmt_deeplab.models.layers.recompute import run_block

CROP = (33, 33)


def _loss(outputs: dict) -> torch.Tensor:
    """Every output the training loss reads, the per-layer auxiliary ones included (cheaper
    than the matching loss; the same graph)."""
    tensors = [outputs["pred_logits"], outputs["pred_masks"], outputs["semantic_logits"]]
    for aux in outputs["aux_outputs"]:
        tensors += [aux["pred_logits"], aux["pred_masks"]]
    return sum(t.sin().mean() for t in tensors)


def _step(model: nn.Module, mode: str, images: torch.Tensor) -> dict:
    """One forward + loss + backward from a fixed seed; gradients, buffers, RNG state after."""
    set_recompute(model, mode)
    start = {key: value.clone() for key, value in model.state_dict().items()}
    torch.manual_seed(11)
    outputs = model(images)
    num_aux = len(outputs["aux_outputs"])
    loss = _loss(outputs)
    loss.backward()
    result = {
        "loss": loss.detach(),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        "buffers": {k: v.clone() for k, v in model.state_dict().items()},
        "rng": torch.get_rng_state(),
        "aux": (num_aux, len(outputs["aux_outputs"])),
    }
    model.zero_grad(set_to_none=True)
    model.load_state_dict(start)
    return result


@pytest.mark.parametrize("name", ["cmt-deeplab-tiny", "max-deeplab-tiny"])
def test_recompute_matches_the_plain_path(name):
    torch.manual_seed(0)
    # Drop path on (keep 0.6) in every block and transformer layer: the recomputed forward
    # must draw the masks of the first one, or the gradients differ.
    model = build_model(name, num_classes=6, num_thing_classes=3, num_slots=8,
                        drop_path_keep_prob=0.6, drop_path_beyond_stride=4).train()
    images = torch.randn(2, 3, *CROP)
    plain = _step(model, "none", images)
    for mode in ("axial", "blocks"):
        got = _step(model, mode, images)
        assert torch.equal(got["loss"], plain["loss"])
        assert got["grads"].keys() == plain["grads"].keys()
        for key, expected in plain["grads"].items():
            scale = expected.abs().max().clamp_min(1e-30)
            assert (got["grads"][key] - expected).abs().max() <= 1e-6 * scale, (mode, key)
        # BatchNorm running statistics and num_batches_tracked moved once, as without recompute.
        for key, expected in plain["buffers"].items():
            assert torch.equal(got["buffers"][key], expected), (mode, key)
        # The global RNG continues where the plain path leaves it (next step's masks agree).
        assert torch.equal(got["rng"], plain["rng"])
        # The re-run in backward records into a scratch state, not the outputs.
        assert got["aux"] == plain["aux"]


def test_recomputed_dropout_draws_the_same_mask():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.5), nn.Linear(64, 16)).train()
    x = torch.randn(32, 16, requires_grad=True)
    grads = []
    for mode in ("none", "blocks"):
        torch.manual_seed(3)
        run_block(layer, x, mode).square().sum().backward()
        grads.append((x.grad.clone(), [p.grad.clone() for p in layer.parameters()]))
        x.grad = None
        layer.zero_grad(set_to_none=True)
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1], strict=True))


def test_torch_checkpoint_alone_updates_batchnorm_twice_ours_once():
    """What the buffer restore is for: torch re-runs BN in train mode during backward."""
    block = ResidualBlock(8, 4, "bottleneck").train()
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    checkpoint(block, x, use_reentrant=False).sum().backward()
    tracked = [m.num_batches_tracked.item() for m in block.modules()
               if isinstance(m, nn.BatchNorm2d)]
    assert set(tracked) == {2}  # torch's checkpoint counts the recompute as a batch

    block = ResidualBlock(8, 4, "bottleneck").train()
    plain = ResidualBlock(8, 4, "bottleneck").train()
    plain.load_state_dict(block.state_dict())
    run_block(block, x, "blocks").sum().backward()
    plain(x).sum().backward()
    for (key, got), expected in zip(block.state_dict().items(), plain.state_dict().values(),
                                    strict=True):
        assert torch.equal(got, expected), key
    assert {m.num_batches_tracked.item() for m in block.modules()
            if isinstance(m, nn.BatchNorm2d)} == {1}


def _saved_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward outside recomputed modules."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    return total


def test_recompute_keeps_fewer_activations_and_leaves_eval_alone():
    model = build_model("cmt-deeplab-tiny", num_classes=6, num_thing_classes=3,
                        num_slots=8).train()
    images = torch.randn(1, 3, 33, 33)
    saved = {mode: _saved_bytes(set_recompute(model, mode), images)
             for mode in ("none", "axial", "blocks")}
    assert saved["blocks"] < saved["axial"] < saved["none"]
    assert saved["blocks"] < 0.5 * saved["none"], saved
    # The stem and the semantic head are recomputed too (their stride-2/4 maps are large).
    assert model.backbone.recompute == model.semantic_head.recompute == "blocks"
    set_recompute(model, "none")
    model.backbone.recompute = model.semantic_head.recompute = "blocks"
    assert _saved_bytes(model, images) < saved["none"]
    # Evaluation runs the plain path (nothing to save, nothing recomputed).
    model.eval()
    with torch.no_grad():
        set_recompute(model, "none")
        expected = model(images)["pred_masks"]
        set_recompute(model, "blocks")
        assert torch.equal(model(images)["pred_masks"], expected)


def test_recompute_mode_is_checked():
    model = build_model("cmt-deeplab-tiny", num_classes=6, num_thing_classes=3, num_slots=8)
    with pytest.raises(ValueError, match="recompute must be one of none, axial, blocks"):
        set_recompute(model, "all")
    with pytest.raises(ValueError, match="model.recompute must be one of"):
        TrainConfig.from_dict({"model": {"recompute": "everything"}})
    assert TrainConfig.from_dict({"model": {"recompute": "axial"}}).model.recompute == "axial"
