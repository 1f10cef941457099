"""The batched axial attention equals the direct einsum formulation of deeplab2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmt_deeplab.models.layers.axial_attention import (
    MAX_SPAN,
    AxialAttention,
    AxialAttention2D,
    relative_index,
)


def reference_axial_attention(
    module: AxialAttention, x: torch.Tensor, training: bool = False
) -> torch.Tensor:
    """Direct einsum form of :class:`AxialAttention`, for tests of the batched path."""
    batch, length, _ = x.shape
    heads = module.num_heads
    dk, dv = module.key_channels // heads, module.value_channels // heads
    bn = module.qkv_bn
    qkv = F.batch_norm(
        module.qkv(x).reshape(batch * length, -1), bn.running_mean.clone(), bn.running_var.clone(),
        bn.weight, bn.bias, training, 0.0, bn.eps,
    ).reshape(batch, length, -1)
    q, k, v = qkv.split([module.key_channels, module.key_channels, module.value_channels], -1)
    q = q.reshape(batch, length, heads, dk)
    k = k.reshape(batch, length, heads, dk)
    v = v.reshape(batch, length, heads, dv)
    index = relative_index(length, x.device)
    terms = [
        torch.einsum("bohd,bphd->bhop", q, k),
        torch.einsum("bohd,opd->bhop", q, module.query_rpe[index]),
        torch.einsum("bphd,opd->bhop", k, module.key_rpe[index]),
    ]
    logits = torch.stack(terms, 1).reshape(batch, 3 * heads, length * length)
    logits = F.batch_norm(
        logits, module.similarity_bn.running_mean.clone(), module.similarity_bn.running_var.clone(),
        module.similarity_bn.weight, module.similarity_bn.bias, training, 0.0,
        module.similarity_bn.eps,
    ).reshape(batch, 3, heads, length, length).sum(1)
    weights = logits.softmax(-1)
    outs = [
        torch.einsum("bhop,bphd->bhdo", weights, v),
        torch.einsum("bhop,opd->bhdo", weights, module.value_rpe[index]),
    ]
    out = torch.stack(outs, 1).reshape(batch, 2 * module.value_channels, length)
    out = F.batch_norm(
        out, module.output_bn.running_mean.clone(), module.output_bn.running_var.clone(),
        module.output_bn.weight, module.output_bn.bias, training, 0.0, module.output_bn.eps,
    ).reshape(batch, 2, heads, dv, length).sum(1)
    return out.reshape(batch, module.value_channels, length).transpose(1, 2)


def _randomise_bn(module: torch.nn.Module) -> None:
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize("length", [1, 7, 41, 300])
def test_folded_eval_path_equals_einsum_reference(length):
    torch.manual_seed(0)
    module = AxialAttention(32, 16, 32, num_heads=4).eval()
    _randomise_bn(module)
    x = torch.randn(3, length, 32)
    with torch.no_grad():
        torch.testing.assert_close(module(x), reference_axial_attention(module, x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("length", [2, 41])
def test_batched_training_path_equals_einsum_reference(length):
    torch.manual_seed(0)
    module = AxialAttention(32, 16, 32, num_heads=4).train()
    _randomise_bn(module)
    x = torch.randn(3, length, 32)
    expected = reference_axial_attention(module, x, training=True)
    torch.testing.assert_close(module(x), expected, atol=1e-4, rtol=1e-4)


def test_relative_index_is_centred_and_clipped():
    index = relative_index(5)
    assert index[2, 2] == MAX_SPAN - 1 and index[0, 4] == MAX_SPAN + 3 and index[4, 0] == MAX_SPAN - 5
    long = relative_index(600)
    assert long.min() == 0 and long.max() == 2 * MAX_SPAN - 2


def test_axial_attention_2d_stride_subsamples_both_axes():
    module = AxialAttention2D(16, 8, stride=2, num_heads=4)
    out = module(torch.randn(2, 16, 9, 12))
    assert out.shape == (2, 16, 5, 6)


def test_rpe_tables_have_509_rows_whatever_the_input():
    module = AxialAttention(16, 8, 16, num_heads=4)
    assert module.query_rpe.shape == (509, 2) and module.value_rpe.shape == (509, 4)


def test_relative_index_cached_under_inference_mode_still_trains():
    """The index is cached; one made first under inference mode must not break a later
    training backward (which saves it)."""
    layer = AxialAttention(8, 8, 8, num_heads=2)
    with torch.inference_mode():
        layer.eval()(torch.randn(2, 11, 8))
    assert not relative_index(11).is_inference()
    layer.train()(torch.randn(2, 11, 8)).sum().backward()
    assert layer.query_rpe.grad is not None
