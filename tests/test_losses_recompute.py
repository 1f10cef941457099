"""Loss terms recomputed in backward (``losses.recompute``): the same losses and gradients as
the plain path, the pixel sampling's generator drawing the same pixels and left where the
plain path leaves it, and fewer tensors kept for backward."""

from __future__ import annotations

import torch

import cmt_deeplab
from cmt_deeplab.data.random_batch import random_batch
from cmt_deeplab.losses import LossConfig
from cmt_deeplab.losses.criterion import PanopticCriterion


def _outputs():
    torch.manual_seed(0)
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=7, num_thing_classes=3,
                                    num_slots=8)
    images, targets = random_batch(2, (65, 65), 7, 3, seed=1)
    with torch.no_grad():
        outputs = model.train()(images)
    return outputs, targets


def _leaves(outputs):
    """The outputs as gradient leaves (a fresh copy per run)."""
    def leaf(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().clone().requires_grad_()
        if isinstance(value, dict):
            return {k: leaf(v) for k, v in value.items()}
        if isinstance(value, list):
            return [leaf(v) for v in value]
        return value
    return leaf(outputs)


def _grads(outputs):
    found = []
    def walk(value):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            found.append(value.grad)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
    walk(outputs)
    return found


def _run(outputs, targets, recompute):
    generator = torch.Generator().manual_seed(3)
    config = LossConfig(instance_sample_k=64, mask_approx_weight=1.0)
    criterion = PanopticCriterion(7, config, generator, recompute=recompute)
    leaves = _leaves(outputs)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda x: saved.append(x.untyped_storage().nbytes()) or x, lambda x: x):
        losses = criterion(leaves, targets)
    losses["loss"].backward()
    return losses, _grads(leaves), generator.get_state(), sum(saved)


def test_recomputed_terms_give_the_plain_losses_gradients_and_draws():
    outputs, targets = _outputs()
    plain, plain_grads, plain_state, plain_saved = _run(outputs, targets, False)
    again, again_grads, again_state, again_saved = _run(outputs, targets, True)
    assert plain.keys() == again.keys() and any(k.startswith("aux_") for k in plain)
    for name in plain:
        assert torch.equal(plain[name], again[name]), name
    assert len(plain_grads) == len(again_grads) and any(g is not None for g in plain_grads)
    for ours, theirs in zip(plain_grads, again_grads, strict=True):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(theirs, ours, rtol=1e-6, atol=1e-9)
    assert torch.equal(plain_state, again_state)  # later draws unchanged
    assert again_saved < plain_saved / 2
