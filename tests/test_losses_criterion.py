"""PanopticCriterion end to end on contract-shaped random tensors."""

import math

import pytest
import torch
import torch.nn.functional as F

from cmt_deeplab.losses import LossConfig, PanopticCriterion, build_targets, mask_moments

B, N, K, D, G = 2, 6, 4, 8, 3
H = W = 17  # 4 x 4 + 1: mask resolution 5 x 5 with stride 4
h = w = 5
TERMS = ["loss_pq_class", "loss_pq_dice", "loss_mask_id", "loss_instance", "loss_mask_approx"]


def _samples(seed=0):
    """B contract samples; every mask survives the stride-4 slicing."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    for b in range(B):
        small = torch.randint(-1, G, (h, w), generator=gen)
        small[0, :G] = torch.arange(G)  # each mask owns at least one pixel
        index = ((torch.arange(H) + 2) // 4).clamp(max=h - 1)
        full = small[index][:, index]
        labels = torch.tensor([0, 2, 3]) if b == 0 else torch.tensor([1, 1, 3])
        semantic = torch.where(full >= 0, labels[full.clamp(min=0)], -1)
        samples.append(
            {
                "image": torch.zeros(3, H, W),
                "masks": torch.stack([full == g for g in range(G)]),
                "labels": labels,
                "is_thing": torch.tensor([True, True, False]),
                "void": full < 0,
                "semantic": semantic,
                "image_id": b,
            }
        )
    return samples


def _random_output(gen, with_ref=True):
    out = {
        "pred_logits": torch.randn(B, N, K + 1, generator=gen),
        "pred_masks": torch.randn(B, N, h, w, generator=gen),
        "pixel_feature": F.normalize(torch.randn(B, D, h, w, generator=gen), dim=1),
    }
    if with_ref:
        out["ref_mu"] = torch.rand(B, N, 2, generator=gen)
        out["ref_sigma"] = torch.rand(B, N, 2, generator=gen)
    return out


def _random_outputs(seed=0, num_aux=2):
    gen = torch.Generator().manual_seed(seed)
    outputs = _random_output(gen, with_ref=False)
    outputs["semantic_logits"] = torch.randn(B, K, h, w, generator=gen)
    outputs["aux_outputs"] = [_random_output(gen) for _ in range(num_aux)]
    return outputs


def _perfect_output(samples, slot_of_gt, margin=30.0):
    targets = build_targets(samples)
    mask_id = targets.pixel_mask_id
    pred_masks = torch.zeros(B, N, h, w)
    pred_logits = torch.zeros(B, N, K + 1)
    pred_logits[:, :, K] = margin  # unmatched slots predict void
    pixel_feature = torch.zeros(B, D, h, w)
    for b in range(B):
        for g in range(G):
            slot = slot_of_gt[g]
            pred_masks[b, slot][mask_id[b] == g] = margin
            pred_logits[b, slot] = 0.0
            pred_logits[b, slot, targets.gt_labels[b, g]] = margin
            pixel_feature[b, g][mask_id[b] == g] = 1.0
    pixel_feature[:, D - 1][mask_id < 0] = 1.0
    mean, std = mask_moments(targets)
    ref_mu = torch.rand(B, N, 2)
    ref_sigma = torch.rand(B, N, 2)
    for g in range(G):
        ref_mu[:, slot_of_gt[g]] = mean[:, g]
        ref_sigma[:, slot_of_gt[g]] = std[:, g]
    semantic_logits = margin * F.one_hot(targets.semantic.clamp(min=0), K).permute(0, 3, 1, 2)
    return {
        "pred_logits": pred_logits,
        "pred_masks": pred_masks,
        "pixel_feature": pixel_feature,
        "semantic_logits": semantic_logits.float(),
        "ref_mu": ref_mu,
        "ref_sigma": ref_sigma,
    }


def _criterion(seed=0, **config):
    return PanopticCriterion(K, LossConfig(**config), torch.Generator().manual_seed(seed))


def test_returns_every_term_and_their_sum():
    losses = _criterion()(_random_outputs(), _samples())
    expected = {"loss", "loss_semantic", *TERMS[:4]}
    expected |= {f"aux_{i}_{t}" for i in range(2) for t in TERMS}
    assert set(losses) == expected
    total = sum(v for k, v in losses.items() if k != "loss")
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_perfect_prediction_gives_the_minimum():
    samples = _samples()
    perfect = _perfect_output(samples, slot_of_gt=[4, 0, 2])
    losses = _criterion(instance_sample_k=0)(perfect, samples)
    for term in ("loss_pq_class", "loss_pq_dice", "loss_mask_id", "loss_semantic"):
        assert losses[term].item() < 1e-4, term
    random = _criterion(instance_sample_k=0)(_random_outputs(), samples)
    for term in ("loss_pq_class", "loss_pq_dice", "loss_mask_id", "loss_instance"):
        assert losses[term].item() < random[term].item(), term
    # Orthogonal one-hot mask features: each pixel's logit is 1/tau on its own mask, 0 else.
    expected_instance = -math.log(math.exp(1 / 0.3) / (math.exp(1 / 0.3) + G - 1))
    assert losses["loss_instance"].item() == pytest.approx(expected_instance, rel=1e-4)
    # Reference Gaussians equal to the GT moments: zero mask-approximation loss.
    perfect["aux_outputs"] = [dict(perfect)]
    assert _criterion()(perfect, samples)["aux_0_loss_mask_approx"].item() < 1e-6


def test_aux_outputs_use_the_final_permutation():
    samples = _samples()
    perfect = _perfect_output(samples, slot_of_gt=[4, 0, 2])
    shuffled = _perfect_output(samples, slot_of_gt=[1, 3, 5])
    perfect["aux_outputs"] = [dict(perfect), shuffled]
    losses = _criterion()(perfect, samples)
    for term in ("loss_pq_dice", "loss_mask_id", "loss_pq_class"):
        assert losses[f"aux_0_{term}"].item() == pytest.approx(losses[term].item(), abs=1e-6)
        # Perfect on its own, but judged with the final output's assignment.
        assert losses[f"aux_1_{term}"].item() > 100 * losses[term].item() + 0.01, term


def test_permuting_slots_leaves_every_loss_unchanged():
    samples, outputs = _samples(), _random_outputs()
    perm = torch.tensor([3, 5, 0, 1, 4, 2])

    def permute(out):
        return {
            key: (
                value[:, perm]
                if key in ("pred_logits", "pred_masks", "ref_mu", "ref_sigma")
                else value
            )
            for key, value in out.items()
        }

    permuted = permute(outputs)
    permuted["aux_outputs"] = [permute(aux) for aux in outputs["aux_outputs"]]
    before = _criterion(seed=3)(outputs, samples)
    after = _criterion(seed=3)(permuted, samples)
    for key in before:
        assert after[key].item() == pytest.approx(before[key].item(), rel=1e-5, abs=1e-7), key


def test_void_pixels_contribute_nothing():
    samples, outputs = _samples(), _random_outputs()
    void = build_targets(samples).pixel_valid.logical_not()  # [B, h, w]; semantic is -1 there
    assert void.any()
    changed = _random_outputs(seed=9)

    def blend(new, old):
        result = dict(old)
        for key in ("pred_masks", "pixel_feature", "semantic_logits"):
            if key in old:
                result[key] = torch.where(void[:, None], new[key], old[key])
        return result

    edited = blend(changed, outputs)
    edited["aux_outputs"] = [
        blend(new, old)
        for new, old in zip(changed["aux_outputs"], outputs["aux_outputs"], strict=True)
    ]
    before = _criterion(seed=1)(outputs, samples)
    after = _criterion(seed=1)(edited, samples)
    for key in before:
        if key.endswith("loss_pq_class") or key == "loss":
            continue
        assert after[key].item() == pytest.approx(before[key].item(), rel=1e-6), key
    # The one exception, by design (deeplab2 code, fact sheet §6.3): an unmatched slot's
    # void-target weight is its overlap with void, so mass on void pixels changes it.
    assert after["loss_pq_class"].item() != pytest.approx(before["loss_pq_class"].item(), rel=1e-6)


def test_gradients_reach_every_prediction():
    outputs = _random_outputs()
    leaves = []
    for out in [outputs, *outputs["aux_outputs"]]:
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                value.requires_grad_(True)
                leaves.append((key, value))
    _criterion()(outputs, _samples())["loss"].backward()
    names = {key for key, _ in leaves}
    assert names == {
        "pred_logits",
        "pred_masks",
        "pixel_feature",
        "semantic_logits",
        "ref_mu",
        "ref_sigma",
    }
    for key, value in leaves:
        assert value.grad is not None and value.grad.abs().sum() > 0, key


def test_weights_and_options():
    samples, outputs = _samples(), _random_outputs()
    base = _criterion()(outputs, samples)
    doubled = _criterion(pq_weight=6.0, aux_weight=0.5)(outputs, samples)
    assert doubled["loss_pq_dice"].item() == pytest.approx(2 * base["loss_pq_dice"].item())
    assert doubled["aux_1_loss_pq_class"].item() == pytest.approx(
        base["aux_1_loss_pq_class"].item()
    )
    assert doubled["aux_0_loss_mask_id"].item() == pytest.approx(
        base["aux_0_loss_mask_id"].item() / 2
    )
    off = _criterion(mask_id_weight=0.0, semantic_weight=0.0, mask_approx_weight=0.0)(
        outputs, samples
    )
    assert not any("mask_id" in k or "semantic" in k or "approx" in k for k in off)
    original = _criterion(instance_sample_k=0)(outputs, samples)
    assert original["loss_instance"].item() != pytest.approx(base["loss_instance"].item())
    assert LossConfig.from_dict({"alpha": 0.5}).alpha == 0.5
    with pytest.raises(ValueError, match="unknown loss options"):
        LossConfig.from_dict({"pq_wieght": 1.0})
    with pytest.raises(ValueError, match="semantic_topk"):
        LossConfig(semantic_topk=0.0)
    with pytest.raises(ValueError, match="pq_weight"):
        LossConfig(pq_weight=-1.0)


def test_sampling_reproducible_through_the_criterion():
    samples, outputs = _samples(), _random_outputs()
    first = _criterion(seed=4, instance_sample_k=10)(outputs, samples)["loss_instance"]
    again = _criterion(seed=4, instance_sample_k=10)(outputs, samples)["loss_instance"]
    other = _criterion(seed=5, instance_sample_k=10)(outputs, samples)["loss_instance"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_non_finite_values_raise_naming_the_key_or_term():
    samples = _samples()
    outputs = _random_outputs()
    outputs["pred_masks"][0, 1, 2, 3] = math.nan
    with pytest.raises(FloatingPointError, match="pred_masks"):
        _criterion()(outputs, samples)
    outputs = _random_outputs()
    outputs["aux_outputs"][1]["pixel_feature"][1, 0, 0, 0] = math.inf
    with pytest.raises(FloatingPointError, match="aux_1_loss_instance"):
        _criterion(instance_sample_k=0)(outputs, samples)


def test_boundary_errors():
    samples, outputs = _samples(), _random_outputs()
    with pytest.raises(ValueError, match="mask_stride"):
        _criterion(mask_stride=2)(outputs, samples)
    with pytest.raises(ValueError, match="pred_logits"):
        PanopticCriterion(K + 1)(outputs, samples)
    del outputs["semantic_logits"]
    with pytest.raises(KeyError, match="semantic_logits"):
        _criterion()(outputs, samples)
    outputs = _random_outputs()
    del outputs["aux_outputs"][0]["pixel_feature"]
    with pytest.raises(KeyError, match=r"aux_outputs'\]\[0\].*pixel_feature"):
        _criterion()(outputs, samples)
    with pytest.raises(ValueError, match="2 images"):
        _criterion()(_random_outputs(), samples[:1])


def test_losses_run_in_float32_inside_autocast():
    samples, outputs = _samples(), _random_outputs()
    plain = _criterion(seed=2)(outputs, samples)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = _criterion(seed=2)(outputs, samples)
    for key in plain:
        assert mixed[key].dtype == torch.float32
        assert mixed[key].item() == pytest.approx(plain[key].item(), rel=1e-6), key


def test_image_without_ground_truth_masks():
    samples = _samples()
    empty = samples[1]
    empty["masks"] = empty["masks"][:0]
    empty["labels"], empty["is_thing"] = empty["labels"][:0], empty["is_thing"][:0]
    empty["void"] = torch.ones_like(empty["void"])
    empty["semantic"] = torch.full_like(empty["semantic"], -1)
    outputs = _random_outputs()
    losses = _criterion()(outputs, samples)
    assert all(torch.isfinite(v) for v in losses.values())
    # Image 1 adds nothing but its class term (every slot -> void), so halving the batch
    # mean of the others is exact for the dice and mask-ID terms.
    only_first = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}
    only_first["aux_outputs"] = [
        {k: v[:1] for k, v in aux.items()} for aux in outputs["aux_outputs"]
    ]
    single = PanopticCriterion(K, LossConfig(), torch.Generator().manual_seed(0))
    first = single(only_first, samples[:1])
    for term in ("loss_pq_dice", "loss_mask_id", "loss_instance", "aux_0_loss_mask_id"):
        assert losses[term].item() == pytest.approx(first[term].item() / 2, rel=1e-5), term


@pytest.mark.parametrize("stack_bytes", [None, 1])
@pytest.mark.parametrize("sample_k", [0, 4096, 10])
def test_stacked_outputs_equal_one_output_at_a_time(sample_k, stack_bytes, monkeypatch):
    """Deep supervision runs every term once over the outputs stacked along the batch; each
    output's terms equal those computed for it alone (same matching, same sampling draws),
    also when one output has a different pixel-feature width and goes its own way, and when
    the stacking budget keeps every output alone."""
    from cmt_deeplab.losses import stacking
    from cmt_deeplab.losses.mask_id_loss import pixel_target_slot
    from cmt_deeplab.losses.matcher import slot_for_gt
    from cmt_deeplab.losses.pq_loss import pq_loss_weights

    if stack_bytes is not None:
        monkeypatch.setattr(stacking, "STACK_BYTES", stack_bytes)

    outputs = _random_outputs(num_aux=3)
    gen = torch.Generator().manual_seed(9)
    outputs["aux_outputs"][1]["pixel_feature"] = F.normalize(
        torch.randn(B, D + 4, h, w, generator=gen), dim=1)
    criterion = _criterion(seed=3, instance_sample_k=sample_k)
    stacked = criterion(outputs, _samples())

    alone = _criterion(seed=3, instance_sample_k=sample_k)
    targets = build_targets(_samples())
    slots = slot_for_gt(alone.matcher(outputs, targets), G, "cpu")
    weights = pq_loss_weights(outputs["pred_logits"], outputs["pred_masks"], targets, slots)
    target_slot = pixel_target_slot(targets, slots)
    everything = [outputs, *outputs["aux_outputs"]]
    # Outputs of one shape share a draw, in output order: reproduce that order.
    for index in [0, 1, 3, 2]:
        terms = alone._batch_terms(everything[index], targets, slots, weights, target_slot)
        prefix = "" if index == 0 else f"aux_{index - 1}_"
        for name, value in terms.items():
            torch.testing.assert_close(stacked[prefix + name], value.mean(), rtol=1e-6,
                                       atol=1e-7)
