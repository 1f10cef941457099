"""Forward shapes, gradients, batch invariance, ablation switches, bad input, save/load."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import cmt_deeplab
from _small_models import small_model
from cmt_deeplab.models import count_parameters

ALL_MODELS = cmt_deeplab.list_models()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shapes_at_paper_widths_on_meta(name):
    """Every registered model at its real size, shapes only (meta device), odd input size."""
    with torch.device("meta"):
        model = cmt_deeplab.build_model(name)
        images = torch.empty(2, 3, 97, 131)
    model.train()
    out = model(images)
    assert out["pred_logits"].shape == (2, 128, 134)
    assert out["pred_masks"].shape == (2, 128, 25, 33)
    feature_dim = 32 if name.endswith("tiny") else 128
    assert out["pixel_feature"].shape == (2, feature_dim, 25, 33)
    assert out["semantic_logits"].shape == (2, 133, 25, 33)
    assert len(out["aux_outputs"]) >= (1 if name.endswith("tiny") else 3)
    for aux in out["aux_outputs"]:
        assert aux["pred_masks"].shape == (2, 128, 25, 33)
        assert aux["pred_logits"].shape == (2, 128, 134)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_real_forward_and_maps_at_odd_size(name):
    torch.manual_seed(0)
    model = small_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 131), return_maps=True)
    assert out["pred_masks"].shape == (1, 16, 25, 33)
    assert torch.allclose(out["pixel_feature"].norm(dim=1), torch.ones(1, 25, 33), atol=1e-4)
    assert "semantic_logits" not in out  # training only
    assert out["maps"], "return_maps gives one map dict per transformer layer"
    for maps in out["maps"]:
        attention = maps["attention"]
        assert attention.dim() == 4 and attention.shape[:2] == (1, 16)
        assert torch.all(attention >= 0)
        if "clustering" in maps:  # soft assignment: a distribution over the clusters
            assert torch.allclose(maps["clustering"].sum(1), torch.ones(1, *attention.shape[-2:]), atol=1e-4)
    if name.startswith("cmt"):
        assert all("clustering" in m for m in out["maps"])
        assert all("ref_mu" in aux for aux in out["aux_outputs"] if "ref_sigma" in aux)


def _set_bn_gamma_nonzero(model: torch.nn.Module) -> None:
    # Zero-initialised residual ends block every gradient behind them at step 0; give them
    # a value so the test sees whether each parameter is wired into the loss at all.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.constant_(module.weight, 0.5)


@pytest.mark.parametrize("name", ["cmt-deeplab-tiny", "max-deeplab-tiny", "cmt-deeplab-l-rfn"])
def test_gradients_reach_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = small_model(name).train()
    _set_bn_gamma_nonzero(model)
    out = model(torch.randn(2, 3, 65, 65))
    # Random weights: a plain mean would give exactly zero gradient to BN shifts after a
    # train-mode BN (its output has zero mean by construction).
    tensors = [out["semantic_logits"]]
    for pred in [out] + out["aux_outputs"]:
        tensors += [pred[key] for key in ("pred_logits", "pred_masks", "pixel_feature",
                                          "ref_mu", "ref_sigma") if key in pred]
    loss = sum((t * torch.randn_like(t)).mean() for t in tensors)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing


@pytest.mark.parametrize("name", ["cmt-deeplab-tiny", "max-deeplab-tiny", "cmt-deeplab-l-rfn"])
def test_eval_mode_batch_invariance(name):
    torch.manual_seed(0)
    model = small_model(name)
    model.train()
    with torch.no_grad():  # a few steps of BN statistics so eval differs from init
        for _ in range(2):
            model(torch.randn(2, 3, 65, 65))
    model.eval()
    batch = torch.randn(3, 3, 65, 81)
    with torch.no_grad():
        alone = model(batch[1:2])
        together = model(batch)
    for key in ("pred_logits", "pred_masks", "pixel_feature"):
        torch.testing.assert_close(alone[key][0], together[key][1], atol=1e-4, rtol=1e-4)


ABLATIONS = {
    # switch: parameter difference of one CMT layer at pixel width C_p, D = 2f, V = 2f
    "use_pixel_update": lambda cp, v: (v + 2) * cp + 2 * cp + 2 * v,
    "use_reference_mask": lambda cp, v: (v * v + 2 * v) + (v * 4 + 4),
    "use_clustering_update": lambda cp, v: 2 * v + v * 128 + 2 * 128,
    "use_coord_conv": lambda cp, v: 2 * cp,
    "use_residual_assignment": lambda cp, v: 0,
}


@pytest.mark.parametrize("switch", sorted(ABLATIONS))
def test_each_ablation_switch_changes_count_and_behaviour(switch):
    torch.manual_seed(0)
    full = small_model("cmt-deeplab-tiny").eval()
    _set_bn_gamma_nonzero(full)
    ablated = small_model("cmt-deeplab-tiny", **{switch: False}).eval()
    shapes = {k: v.shape for k, v in ablated.state_dict().items()}
    ablated.load_state_dict(
        {k: v for k, v in full.state_dict().items() if shapes.get(k) == v.shape}, strict=False
    )
    layers = [m for m in full.modules() if type(m).__name__ == "ClusteringMaskTransformerLayer"]
    expected = sum(ABLATIONS[switch](m.pixel_conv1[0].in_channels, m.value_channels) for m in layers)
    assert count_parameters(full) - count_parameters(ablated) == expected
    images = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        a, b = full(images), ablated(images)
    assert not torch.allclose(a["pred_masks"], b["pred_masks"], atol=1e-5)


def test_cmt_layer_with_everything_off_is_the_max_update():
    from cmt_deeplab.models.transformer.cmt_layer import ClusteringMaskTransformerLayer
    from cmt_deeplab.models.transformer.dual_path import DualPathTransformerLayer

    torch.manual_seed(0)
    kwargs = {"memory_channels": 32, "filters": 16, "num_heads": 4, "ffn_channels": 48}
    max_layer = DualPathTransformerLayer(24, use_pixel2memory_attention=False, **kwargs).eval()
    cmt_layer = ClusteringMaskTransformerLayer(
        24, 5, **kwargs, pixel_feature_dim=8, head_channels=16, use_clustering_update=False,
        use_pixel_update=False, use_residual_assignment=False, use_reference_mask=False,
        use_coord_conv=False,
    ).eval()
    _set_bn_gamma_nonzero(max_layer)
    missing, unexpected = cmt_layer.load_state_dict(max_layer.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("predictor.") for k in missing)
    pixels, memory = torch.randn(2, 24, 5, 7), torch.randn(2, 6, 32)
    with torch.no_grad():
        p_max, m_max = max_layer(pixels, memory)
        p_cmt, m_cmt = cmt_layer(pixels, memory)
    torch.testing.assert_close(m_cmt, m_max)
    torch.testing.assert_close(p_cmt, p_max)
    # The layer then only adds its per-layer predictor (deep supervision) to MaX's layer.
    predictor = sum(p.numel() for p in cmt_layer.predictor.parameters())
    assert count_parameters(cmt_layer) == count_parameters(max_layer) + predictor


def test_rfn_shares_one_centre_table_and_exposes_net1():
    model = small_model("cmt-deeplab-l-rfn").train()
    assert model.net1.centers is None and model.net2.centers is None
    out = model(torch.randn(1, 3, 65, 65))
    layers = model.net1.num_layers
    assert len(out["aux_outputs"]) == 2 * layers + 1  # net 1's layers, net 1's final, net 2's layers
    net1_final = out["aux_outputs"][layers]
    assert "ref_mu" not in net1_final and net1_final["pred_masks"].shape == out["pred_masks"].shape


def test_state_dict_round_trip_through_safetensors_is_bit_identical(tmp_path):
    model = small_model("cmt-deeplab-tiny")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    other = small_model("cmt-deeplab-tiny")
    other.load_state_dict(load_file(str(path)))
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'cmt-deeplab-xl'.*cmt-deeplab-s"):
        cmt_deeplab.build_model("cmt-deeplab-xl")


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="use_pixel_updates"):
        cmt_deeplab.build_model("cmt-deeplab-tiny", use_pixel_updates=False)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.zeros(1, 4, 33, 33), "3 channels"),
        (torch.zeros(1, 1, 33, 33), "3 channels"),
        (torch.zeros(1, 3, 33, 33, dtype=torch.uint8), "floating point"),
        (torch.zeros(3, 33, 33), r"\[B, 3, H, W\]"),
        (torch.full((1, 3, 33, 33), float("nan")), "NaN"),
    ],
)
def test_bad_input_gives_a_clear_error(images, message):
    model = small_model("cmt-deeplab-tiny").eval()
    with pytest.raises(ValueError, match=message):
        model(images)


def test_sync_batchnorm_conversion_keeps_numerics():
    """Distributed training converts every BN to ``SyncBatchNorm`` (torch's converter), keeping
    deeplab2's eps and momentum; the memory-path BNs see ``[B*N, C]``, which it accepts too."""
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(small_model("cmt-deeplab-tiny"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)


def test_aspp_centre_tap_shortcut_is_exact() -> None:
    """On a map no larger than the rate, the ASPP's shortcut equals the full dilated conv."""
    from cmt_deeplab.models.heads.semantic_head import ASPP

    torch.manual_seed(0)
    aspp = ASPP(8, 6, rates=(2, 6, 9)).eval()
    x = torch.randn(2, 8, 6, 5, requires_grad=True)
    fast = aspp(x)
    fast.square().sum().backward()
    fast_grads = [x.grad.clone()] + [p.grad.clone() for p in aspp.parameters()]
    x.grad = None
    aspp.zero_grad()
    full = torch.cat([branch(x) for branch in aspp.branches], dim=1)  # full dilated convs
    conv, bn, act = aspp.pool
    pooled = act(bn(conv(x.mean(dim=(2, 3), keepdim=True)))).expand(-1, -1, 6, 5)
    reference = aspp.project(torch.cat([full, pooled], dim=1))
    torch.testing.assert_close(fast, reference, atol=1e-6, rtol=1e-6)
    reference.square().sum().backward()
    slow_grads = [x.grad] + [p.grad for p in aspp.parameters()]
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
