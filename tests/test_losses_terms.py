"""Each loss term on tiny tensors with values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from cmt_deeplab.losses.instance_discrimination import (
    instance_discrimination_loss,
    pixel_contrastive_loss,
)
from cmt_deeplab.losses.mask_approximation import (
    mask_approximation_loss,
    mask_moments,
    normalized_coordinates,
)
from cmt_deeplab.losses.mask_id_loss import mask_id_loss, pixel_target_slot
from cmt_deeplab.losses.matcher import HungarianMatcher, slot_for_gt
from cmt_deeplab.losses.pq_loss import pq_class_loss, pq_dice_loss, pq_loss_weights
from cmt_deeplab.losses.reduction import mean_over_nonzero, top_k_mean
from cmt_deeplab.losses.sampling import gumbel_top_k
from cmt_deeplab.losses.semantic_loss import semantic_loss
from cmt_deeplab.losses.targets import PanopticTargets


def _targets(mask_id, labels, is_thing, semantic=None):
    """Targets from a ``[1, h, w]`` mask-id map (-1 void) and per-mask labels."""
    mask_id = torch.tensor(mask_id)
    labels = torch.tensor([labels])
    masks = torch.stack([mask_id == g for g in range(labels.shape[1])], dim=1)
    if semantic is None:
        semantic = torch.where(mask_id >= 0, labels[0][mask_id.clamp(min=0)], -1)
    return PanopticTargets(
        gt_masks=masks,
        gt_labels=labels,
        gt_is_thing=torch.tensor([is_thing]),
        gt_valid=labels >= 0,
        pixel_valid=mask_id >= 0,
        pixel_mask_id=mask_id,
        semantic=torch.as_tensor(semantic),
    )


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_reductions():
    loss = torch.tensor([[0.0, 2.0, 4.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert mean_over_nonzero(loss).tolist() == [3.0, 0.0]
    assert top_k_mean(torch.tensor([[1.0, 5.0, 3.0, 0.0]]), 0.5).tolist() == [4.0]


class TestPQLoss:
    """1 x 3 image: GT mask 0 (class 1) on pixels 0 and 1, pixel 2 void; 2 slots, K = 2."""

    mask_logits = torch.tensor([[[[2.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]]])  # [1, 2, 1, 3]
    class_probs = [[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]

    def _setup(self):
        targets = _targets([[[0, 0, -1]]], [1], [True])
        logits = torch.log(torch.tensor([self.class_probs]))
        outputs = {"pred_logits": logits, "pred_masks": self.mask_logits}
        matches = HungarianMatcher()(outputs, targets)
        slots = slot_for_gt(matches, 1, "cpu")
        return targets, logits, slots

    def test_matching_and_weights(self):
        targets, logits, slots = self._setup()
        assert slots.tolist() == [[0]]
        weights = pq_loss_weights(logits, self.mask_logits, targets, slots)
        p0 = [_sigmoid(2.0), _sigmoid(1.0)]  # slot 0's share on the two GT pixels
        intersection = sum(p0)
        dice = intersection / ((2 + intersection) / 2 + 1e-5)
        # Slot 1: its mass on the void pixel over its total mass (void included).
        slot1 = [_sigmoid(-2.0), _sigmoid(-1.0), _sigmoid(1.0)]
        void_ratio = slot1[2] / (sum(slot1) + 1e-5)
        assert weights.class_target.tolist() == [[1, 2]]
        assert weights.class_weight[0].tolist() == pytest.approx([dice, void_ratio], rel=1e-5)
        assert weights.dice_weight.item() == pytest.approx(0.7, rel=1e-5)

        alpha = 0.75
        expected_class = (
            alpha * dice * -math.log(0.7) + (1 - alpha) * void_ratio * -math.log(0.4)
        ) / 2
        assert pq_class_loss(logits, weights, alpha).item() == pytest.approx(
            expected_class, rel=1e-5
        )
        dice_loss = 1 - (2 * intersection + 1) / (intersection + 2 + 1)
        expected_dice = 0.7 * dice_loss * alpha / 2
        got = pq_dice_loss(self.mask_logits, targets, slots, weights, alpha).item()
        assert got == pytest.approx(expected_dice, rel=1e-5)

    def test_mask_id_cross_entropy(self):
        targets, _, slots = self._setup()
        target_slot = pixel_target_slot(targets, slots)
        assert target_slot.tolist() == [[0, 0, -1]]
        expected = (-math.log(_sigmoid(2.0)) - math.log(_sigmoid(1.0))) / 2
        assert mask_id_loss(self.mask_logits, target_slot).item() == pytest.approx(
            expected, rel=1e-5
        )

    def test_weights_floor_at_1e5(self):
        targets, logits, slots = self._setup()
        # Slot 1 has no mass on the void pixel any more: its weight drops to the 1e-5 floor.
        masks = self.mask_logits.clone()
        masks[0, 1, 0, 2] = -50.0
        weights = pq_loss_weights(logits, masks, targets, slots)
        assert weights.class_weight[0, 1].item() == pytest.approx(1e-5)


# Four pixels in a row: mask A = pixels 0, 1; mask B = pixels 2, 3; pixel 4 is void.
_FEATURES = [(1.0, 0.0), (0.6, 0.8), (0.0, 1.0), (-0.6, 0.8), (0.8, -0.6)]


def _feature_map():
    return torch.tensor(_FEATURES).T.reshape(1, 2, 1, 5)


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1]


def _log_softmax(values, index):
    return values[index] - math.log(sum(math.exp(v) for v in values))


def test_instance_discrimination_two_masks_by_hand():
    tau = 0.3
    masks = [[0, 1], [2, 3]]
    prototypes = []
    for pixels in masks:
        mean = [sum(_FEATURES[p][d] for p in pixels) / 2 for d in range(2)]
        norm = math.hypot(*mean)
        prototypes.append((mean[0] / norm, mean[1] / norm))
    losses = []
    for g, pixels in enumerate(masks):
        for p in pixels:
            logits = [_dot(_FEATURES[p], proto) / tau for proto in prototypes]
            losses.append(-_log_softmax(logits, g))

    targets = _targets([[[0, 0, 1, 1, -1]]], [0, 1], [True, True])
    got = instance_discrimination_loss(_feature_map(), targets, tau).item()
    assert got == pytest.approx(sum(losses) / 4, rel=1e-5)
    # Mask B is stuff: only mask A's pixels are anchors, both prototypes stay candidates.
    targets = _targets([[[0, 0, 1, 1, -1]]], [0, 1], [True, False])
    got = instance_discrimination_loss(_feature_map(), targets, tau).item()
    assert got == pytest.approx(sum(losses[:2]) / 2, rel=1e-5)


def test_pixel_contrastive_two_masks_by_hand():
    tau = 0.3
    mask_of = [0, 0, 1, 1]
    losses = []
    for a in range(4):
        logits = [_dot(_FEATURES[a], _FEATURES[b]) / tau for b in range(4)]
        same = [b for b in range(4) if mask_of[b] == mask_of[a]]
        losses.append(-sum(_log_softmax(logits, b) for b in same) / len(same))
    targets = _targets([[[0, 0, 1, 1, -1]]], [0, 1], [True, False])
    # k = 16 > 4 non-void pixels: all are drawn, the void pixel takes no part.
    got = pixel_contrastive_loss(
        _feature_map(), targets, tau, sample_k=16, generator=torch.Generator().manual_seed(0)
    ).item()
    assert got == pytest.approx(sum(losses) / 4, rel=1e-5)


def test_sampling_is_reproducible_with_a_seeded_generator():
    gen = torch.Generator().manual_seed(0)
    mask_id = torch.randint(-1, 4, (2, 12, 12), generator=gen)
    masks = torch.stack([mask_id == g for g in range(4)], dim=1)
    targets = PanopticTargets(
        masks,
        torch.tensor([[0, 1, 2, 3]] * 2),
        torch.ones(2, 4, dtype=torch.bool),
        torch.ones(2, 4, dtype=torch.bool),
        mask_id >= 0,
        mask_id,
        mask_id,
    )
    feature = F.normalize(torch.randn(2, 8, 12, 12, generator=gen), dim=1)

    def run(seed):
        return pixel_contrastive_loss(
            feature, targets, sample_k=20, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


def test_gumbel_top_k_balances_mask_areas():
    # One 1-pixel mask and one 99-pixel mask; with T = 1 each mask gets half the draws.
    area = torch.tensor([1.0] + [99.0] * 99)
    logits = torch.log(100 / area).expand(4000, -1)
    draws = gumbel_top_k(logits, 1, torch.Generator().manual_seed(0))
    share = (draws == 0).float().mean().item()
    assert share == pytest.approx(0.5, abs=0.03)
    # Without replacement: k draws are distinct.
    draws = gumbel_top_k(logits[:3], 50, torch.Generator().manual_seed(1))
    assert all(len(set(row.tolist())) == 50 for row in draws)


def test_semantic_loss_ignore_and_top_k():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9], [0.5, 0.5]])  # 4 pixels, K = 2
    logits = torch.log(probs).T.reshape(1, 2, 1, 4)
    targets = _targets([[[0, 0, 0, -1]]], [0], [False], semantic=[[[0, 1, 0, -1]]])
    ce = [-math.log(0.7), -math.log(0.6), -math.log(0.1)]
    assert semantic_loss(logits, targets).item() == pytest.approx(sum(ce) / 3, rel=1e-5)
    assert semantic_loss(logits, targets, top_k=0.25).item() == pytest.approx(ce[2], rel=1e-5)


def test_mask_approximation_by_hand():
    coords = normalized_coordinates(3, 3)
    assert coords[5].tolist() == [0.5, 1.0]  # row 1, column 2
    # GT mask 0 on pixels (0, 0) and (0, 2): y = {0, 0}, x = {0, 1}.
    targets = _targets([[[0, -1, 0], [1, 1, 1], [-1, -1, -1]]], [0, 1], [True, False])
    mean, std = mask_moments(targets)
    assert mean[0, 0].tolist() == pytest.approx([0.0, 0.5])
    assert std[0, 0].tolist() == pytest.approx([0.0, 0.5])
    assert mean[0, 1].tolist() == pytest.approx([0.5, 0.5])
    assert std[0, 1].tolist() == pytest.approx([0.0, math.sqrt(1 / 6)])

    ref_mu = torch.tensor([[[0.9, 0.9], [0.1, 0.5]]], requires_grad=True)
    ref_sigma = torch.tensor([[[0.0, 0.0], [0.2, 0.3]]], requires_grad=True)
    slots = torch.tensor([[1, -1]])  # only GT 0 is matched, to slot 1
    loss = mask_approximation_loss(ref_mu, ref_sigma, mean, std, slots)
    assert loss.item() == pytest.approx(0.1 + 0.0 + 0.2 + 0.2, rel=1e-5)
    loss.backward()
    assert ref_mu.grad[0, 0].abs().sum() == 0 and ref_mu.grad[0, 1].abs().sum() > 0
    assert ref_sigma.grad[0, 1].tolist() == pytest.approx([1.0, -1.0])


def _check_logsumexp_against_reference(
    feature: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor | None, tolerance: float,
    generator: torch.Generator,
) -> None:
    """``similarity_logsumexp`` (float32) equals masked ``logsumexp(f f^T / 0.3)`` (float64) in
    value and gradient."""
    from cmt_deeplab.losses.instance_discrimination import similarity_logsumexp

    ours_input = feature.float().requires_grad_()
    reference_input = feature.clone().requires_grad_()
    ours = similarity_logsumexp(ours_input, 0.3, candidates)
    logits = reference_input @ reference_input.transpose(1, 2) / 0.3
    reference = logits.masked_fill(~valid[:, None, :], float("-inf")).logsumexp(-1)
    weight = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    (ours.double() * weight).sum().backward()
    (reference * weight).sum().backward()
    torch.testing.assert_close(ours.double(), reference, atol=tolerance, rtol=1e-5)
    torch.testing.assert_close(ours_input.grad.double(), reference_input.grad, atol=tolerance,
                               rtol=tolerance)


@pytest.mark.parametrize("with_void", [False, True])
def test_similarity_logsumexp_equals_reference(with_void: bool) -> None:
    """The fused log-partition equals masked ``logsumexp(f f^T / tau)`` in value and gradient."""
    generator = torch.Generator().manual_seed(3)
    valid = torch.rand(3, 40, generator=generator) > (0.3 if with_void else -1.0)
    feature = F.normalize(torch.randn(3, 40, 8, generator=generator, dtype=torch.float64), dim=-1)
    feature = feature * valid[..., None]
    _check_logsumexp_against_reference(feature, valid, valid if with_void else None, 1e-5,
                                       generator)


def test_similarity_logsumexp_exact_for_rows_of_any_norm_up_to_the_bound() -> None:
    """One shift per image (the largest |f|^2 / tau) keeps every row exact, the small ones too:
    norms from 0 to 2.5 (shift 20.8), void anchors included (their sums run over candidates)."""
    generator = torch.Generator().manual_seed(5)
    norms = torch.rand(2, 30, 1, generator=generator, dtype=torch.float64) * 2.5
    feature = F.normalize(torch.randn(2, 30, 6, generator=generator, dtype=torch.float64), dim=-1)
    valid = torch.rand(2, 30, generator=generator) > 0.25
    _check_logsumexp_against_reference(feature * norms, valid, valid, 1e-4, generator)


def test_similarity_logsumexp_without_candidates_stays_finite() -> None:
    from cmt_deeplab.losses.instance_discrimination import similarity_logsumexp

    feature = torch.zeros(1, 4, 8, requires_grad=True)
    value = similarity_logsumexp(feature, 0.3, torch.zeros(1, 4, dtype=torch.bool))
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(feature.grad).all()
