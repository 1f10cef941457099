"""Hungarian matcher on the PQ-style similarity (cmt_deeplab.losses.matcher)."""

import itertools
import math

import pytest
import torch

from cmt_deeplab.losses.matcher import HungarianMatcher, pq_similarity, slot_for_gt
from cmt_deeplab.losses.targets import PanopticTargets


def _targets(mask_id, labels, is_thing=None):
    """Targets from a ``[B, h, w]`` mask-id map (-1 void) and ``[B, G]`` labels (-1 padding)."""
    mask_id = torch.as_tensor(mask_id)
    labels = torch.as_tensor(labels)
    num_gt = labels.shape[1]
    masks = torch.stack([mask_id == g for g in range(num_gt)], dim=1)
    valid = labels >= 0
    return PanopticTargets(
        gt_masks=masks,
        gt_labels=labels,
        gt_is_thing=valid if is_thing is None else torch.as_tensor(is_thing),
        gt_valid=valid,
        pixel_valid=mask_id >= 0,
        pixel_mask_id=mask_id,
        semantic=torch.where(
            mask_id >= 0,
            labels.clamp(min=0).gather(1, mask_id.flatten(1).clamp(min=0)).view_as(mask_id),
            -1,
        ),
    )


def _random_case(seed, batch=2, num_gt=3, num_slots=4, num_classes=3, size=(4, 5)):
    gen = torch.Generator().manual_seed(seed)
    mask_id = torch.randint(-1, num_gt, (batch, *size), generator=gen)
    labels = torch.randint(0, num_classes, (batch, num_gt), generator=gen)
    outputs = {
        "pred_logits": torch.randn(batch, num_slots, num_classes + 1, generator=gen),
        "pred_masks": torch.randn(batch, num_slots, *size, generator=gen),
    }
    return outputs, _targets(mask_id, labels)


def test_similarity_by_hand():
    # One GT mask on both pixels of a 1 x 2 image, two slots with equal mask logits.
    targets = _targets([[[0, 0]]], [[1]])
    logits = torch.log(torch.tensor([[[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]]))
    masks = torch.zeros(1, 2, 1, 2)
    mask_sim, class_sim = pq_similarity(logits, masks, targets)
    # |g| = 2, |m| = 2 x 0.5 = 1, intersection 1 -> 1 / (1.5 + 1e-5).
    assert mask_sim[0, 0].tolist() == pytest.approx([1 / 1.5] * 2, rel=1e-4)
    # p(class 1) with the void column kept in the softmax.
    assert class_sim[0, 0].tolist() == pytest.approx([0.5, 0.1], rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_assignment_is_the_brute_force_optimum(seed):
    outputs, targets = _random_case(seed)
    mask_sim, class_sim = pq_similarity(outputs["pred_logits"], outputs["pred_masks"], targets)
    similarity = mask_sim * class_sim
    matches = HungarianMatcher()(outputs, targets)
    for b, (slots, gts) in enumerate(matches):
        assert gts.tolist() == [0, 1, 2]
        best = max(
            sum(similarity[b, g, s].item() for g, s in enumerate(perm))
            for perm in itertools.permutations(range(4), 3)
        )
        found = similarity[b, gts, slots].sum().item()
        assert found == pytest.approx(best, abs=1e-6)


def test_permuting_slots_permutes_the_assignment():
    outputs, targets = _random_case(11)
    perm = torch.tensor([2, 0, 3, 1])
    permuted = {key: value[:, perm] for key, value in outputs.items()}
    matcher = HungarianMatcher()
    for (slots, gts), (slots_p, gts_p) in zip(
        matcher(outputs, targets), matcher(permuted, targets), strict=True
    ):
        assert gts.tolist() == gts_p.tolist()
        # Slot s of the permuted output is slot perm[s] of the original.
        assert perm[slots_p].tolist() == slots.tolist()


def test_padding_rows_are_ignored_and_extra_gt_stay_unmatched():
    outputs, targets = _random_case(3, num_gt=3, num_slots=2)
    targets.gt_valid[0, 1] = False
    targets.gt_labels[0, 1] = -1
    matches = HungarianMatcher()(outputs, targets)
    assert matches[0][1].tolist() == [0, 2]
    assert sorted(matches[0][0].tolist()) == [0, 1]
    # Image 1 has 3 valid GT masks for 2 slots: exactly two get matched.
    assert len(matches[1][0]) == 2 and len(set(matches[1][0].tolist())) == 2
    table = slot_for_gt(matches, 3, "cpu")
    assert table[0, 1].item() == -1
    assert (table[1] >= 0).sum().item() == 2


def test_non_finite_input_names_key_and_step():
    outputs, targets = _random_case(0)
    outputs["pred_masks"][1, 0, 0, 0] = math.nan
    with pytest.raises(FloatingPointError, match=r"pred_masks.*Hungarian matching.*\[1\]"):
        HungarianMatcher()(outputs, targets)
    outputs, targets = _random_case(0)
    outputs["pred_logits"][0, 0, 0] = math.inf
    with pytest.raises(FloatingPointError, match="pred_logits"):
        HungarianMatcher()(outputs, targets)
