"""Pixel-wise and mask-wise panoptic post-processing on hand-made logits with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmt_deeplab.data.metadata import Category, DatasetInfo
from cmt_deeplab.inference.post_processing import (
    default_area_limits,
    maskwise_panoptic,
    pixelwise_panoptic,
)
from cmt_deeplab.inference.resize import (
    bilinear_resize_matrix,
    logits_to_output_matrix,
    stride_grid_matrix,
)

# Contiguous order: 0 person, 1 car (things), 2 sky, 3 grass (stuff); void = channel 4.
INFO = DatasetInfo(
    [
        Category(1, "person", True),
        Category(3, "car", True),
        Category(10, "sky", False),
        Category(11, "grass", False),
    ],
    label_divisor=256,
)
PERSON, CAR, SKY, GRASS = 0, 1, 2, 3


def class_logits(*slots: tuple[int, float]) -> torch.Tensor:
    """``[N, K+1]`` logits whose softmax gives class ``c`` probability ``p`` for each slot."""
    num_channels = INFO.num_classes + 1
    rows = []
    for contiguous, confidence in slots:
        # The other channels sit at 0: p = e^a / (e^a + K) -> a = log(p K / (1 - p)).
        row = torch.zeros(num_channels)
        row[contiguous] = math.log(confidence * (num_channels - 1) / (1 - confidence))
        rows.append(row)
    return torch.stack(rows)


def winner_masks(assignment: np.ndarray, num_slots: int, high: float = 6.0) -> torch.Tensor:
    """``[N, h, w]`` mask logits: the assigned slot gets ``high``, the others 0; -1 = 3-way tie."""
    masks = torch.zeros(num_slots, *assignment.shape)
    for slot in range(num_slots):
        masks[slot][torch.from_numpy(assignment == slot)] = high
    return masks


def identity_kwargs(shape: tuple[int, int]) -> dict:
    """Post-process at the mask resolution itself, so that no interpolation blurs the answer."""
    return {"out_size": shape, "input_size": shape, "valid_size": shape}


def test_resize_matrices_match_interpolate() -> None:
    masks = torch.randn(3, 17, 21, dtype=torch.float64)
    for align_corners in (True, False):
        expected = F.interpolate(masks[None], size=(40, 9), mode="bilinear",
                                 align_corners=align_corners)[0]
        rows = bilinear_resize_matrix(17, 40, align_corners)
        cols = bilinear_resize_matrix(21, 9, align_corners)
        torch.testing.assert_close(rows @ masks @ cols.T, expected)
    # Upsample to the padded input (corner-aligned), crop the valid part, resize to the
    # original (half-pixel centres, as the image was resized): one matrix.
    padded = F.interpolate(masks[None], size=(65, 81), mode="bilinear", align_corners=True)
    expected = F.interpolate(padded[..., :50, :77], size=(123, 99), mode="bilinear",
                             align_corners=False)[0]
    rows = logits_to_output_matrix(17, 65, 50, 123)
    cols = logits_to_output_matrix(21, 81, 77, 99)
    torch.testing.assert_close(rows @ masks @ cols.T, expected)


def test_stride_grid_upsampling_puts_sample_j_on_pixel_4j() -> None:
    # 4k+1 lengths (97 = 4 * 24 + 1): the same as align_corners=True.
    torch.testing.assert_close(stride_grid_matrix(25, 97), bilinear_resize_matrix(25, 97, True))
    # A 96-pixel input has 24 samples on pixels 0, 4, ..., 92; pixels 93-95 hold sample 23.
    samples = torch.arange(24, dtype=torch.float64)
    pixels = stride_grid_matrix(24, 96) @ samples
    torch.testing.assert_close(pixels[:93], torch.arange(93, dtype=torch.float64) / 4)
    assert pixels[93:].tolist() == [23.0, 23.0, 23.0]
    # align_corners=True would have stretched the grid: sample 23 on pixel 95, not 92.
    assert (bilinear_resize_matrix(24, 96, True) @ samples)[92] < 22.9
    # Post-processing infers the stride from the lengths (ceil(96 / 24) = 4).
    torch.testing.assert_close(logits_to_output_matrix(24, 96, 96, 96), stride_grid_matrix(24, 96))


def test_pixelwise_thresholds_and_void() -> None:
    # Slots: 0 person (0.9), 1 sky (0.95), 2 car (0.6: below 0.7, dropped), 3 grass (0.8).
    logits = class_logits((PERSON, 0.9), (SKY, 0.95), (CAR, 0.6), (GRASS, 0.8))
    assignment = np.array([
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [0, 0, 2, 2, 3, 3],
        [0, 0, 2, 2, 3, 3],
        [-1, -1, 3, 3, 3, 3],
    ])
    masks = winner_masks(assignment, 4)
    # Three kept slots tie on the last row's first two pixels: pixel confidence 1/3 <= 0.4.
    masks[[0, 1, 3], 4, :2] = 2.0
    result = pixelwise_panoptic(logits, masks, INFO, thing_area_limit=0, stuff_area_limit=0,
                                **identity_kwargs((5, 6)))
    person, sky, grass = 1 * 256 + 1, 10 * 256, 11 * 256
    expected = np.array([
        [sky] * 6,
        [sky] * 6,
        [person, person, 0, 0, grass, grass],  # the dropped car slot's pixels are void:
        [person, person, 0, 0, grass, grass],  # its logits win there, no runner-up inherits
        [0, 0, grass, grass, grass, grass],
    ])
    np.testing.assert_array_equal(result.panoptic, expected)
    assert result.panoptic.dtype == np.int64
    segments = {s["id"]: s for s in result.segments_info}
    assert sorted(segments) == [person, sky, grass]
    assert segments[person] == {"id": person, "category_id": 1, "isthing": True,
                                "score": pytest.approx(0.9, abs=1e-4), "area": 4,
                                "bbox": [0, 2, 2, 2]}
    assert segments[grass]["bbox"] == [2, 2, 4, 3] and segments[grass]["area"] == 8
    assert segments[sky]["isthing"] is False and segments[sky]["area"] == 12
    # Threshold-free semantic pass: the dropped car slot still labels its pixels.
    assert result.semantic[2, 2] == CAR and result.semantic[0, 0] == SKY
    assert (result.semantic >= 0).all()


def test_pixelwise_pixel_threshold_and_ties() -> None:
    # Pixel 0: the best kept slot has p = 0.38 <= 0.4.
    logits = class_logits((PERSON, 0.9), (CAR, 0.9), (SKY, 0.9))
    masks = torch.log(torch.tensor([0.38, 0.24, 0.38]))[:, None, None].expand(3, 1, 2).clone()
    masks[:, 0, 1] = torch.log(torch.tensor([0.45, 0.1, 0.45]))
    result = pixelwise_panoptic(logits, masks, INFO, thing_area_limit=0, stuff_area_limit=0,
                                **identity_kwargs((1, 2)))
    # Pixel 0 is void; pixel 1 ties slots 0 and 2 at 0.45 > 0.4: the first (person) wins.
    np.testing.assert_array_equal(result.panoptic, [[0, 1 * 256 + 1]])


def test_stuff_slots_merge_into_one_segment() -> None:
    logits = class_logits((SKY, 0.8), (SKY, 0.99), (PERSON, 0.9), (PERSON, 0.9))
    assignment = np.array([[0, 0, 1, 1], [2, 2, 3, 3]])
    result = pixelwise_panoptic(logits, winner_masks(assignment, 4), INFO, thing_area_limit=0,
                                stuff_area_limit=0, **identity_kwargs((2, 4)))
    # Thing instance = slot + 1: slots 2 and 3 are persons 259 and 260.
    np.testing.assert_array_equal(result.panoptic, [[2560] * 4, [259, 259, 260, 260]])
    sky = next(s for s in result.segments_info if s["id"] == 2560)
    assert sky["area"] == 4 and sky["score"] == pytest.approx(0.99, abs=1e-4)
    assert [s["id"] for s in result.segments_info] == [259, 260, 2560]


def test_area_limits() -> None:
    # Person slot 0: 3 pixels. Grass in two slots of 2 + 3 pixels: 5 pixels as a class.
    logits = class_logits((PERSON, 0.9), (GRASS, 0.9), (GRASS, 0.9), (SKY, 0.9))
    assignment = np.array([[0, 0, 0, 3], [1, 1, 2, 2], [2, 3, 3, 3]])
    masks = winner_masks(assignment, 4)
    geometry = identity_kwargs((3, 4))

    def run(thing: float, stuff: float) -> np.ndarray:
        return pixelwise_panoptic(logits, masks, INFO, thing_area_limit=thing,
                                  stuff_area_limit=stuff, **geometry).panoptic

    person, grass, sky = 257, 11 * 256, 10 * 256
    full = run(0, 0)
    assert (full == person).sum() == 3 and (full == grass).sum() == 5 and (full == sky).sum() == 4
    assert (run(3, 4) == full).all()  # a region of exactly the limit stays
    limited = run(4, 4)
    assert (limited == person).sum() == 0 and (limited == grass).sum() == 5
    assert (limited == sky).sum() == 4
    limited = run(3, 5)  # stuff counts per class: grass (2 + 3 pixels) stays, sky (4) goes
    assert (limited == grass).sum() == 5 and (limited == sky).sum() == 0
    assert (limited == person).sum() == 3
    limited = run(3, 6)
    assert set(np.unique(limited).tolist()) == {0, person}
    assert [s["id"] for s in pixelwise_panoptic(logits, masks, INFO, thing_area_limit=4,
                                                stuff_area_limit=5, **geometry).segments_info
            ] == [grass]


def test_default_area_limits_scale_with_input_and_output() -> None:
    assert default_area_limits((641, 641), (641, 641), (641, 641)) == pytest.approx((100, 1600))
    thing, stuff = default_area_limits((1025, 1025), (1025, 1025), (1025, 1025))
    assert thing == pytest.approx(256, rel=3e-3) and stuff == pytest.approx(4096, rel=3e-3)
    # A 641-canvas image of 641x481 shown at twice its size: each input pixel covers 4 output.
    assert default_area_limits((641, 641), (481, 641), (962, 1282)) == pytest.approx((400, 6400))


def test_default_area_limit_applies() -> None:
    # 4x scale: 33x33 input, output 33x33 -> limits 100 * 33^2 / 641^2 = 0.265 and 4.24 pixels.
    logits = class_logits((PERSON, 0.9), (SKY, 0.9))
    assignment = np.zeros((33, 33), dtype=int)
    assignment[0, :4] = 1  # 4 sky pixels: below the default stuff limit of 4.24
    result = pixelwise_panoptic(logits, winner_masks(assignment, 2), INFO,
                                **identity_kwargs((33, 33)))
    assert set(np.unique(result.panoptic).tolist()) == {0, 257}
    assignment[0, :5] = 1
    result = pixelwise_panoptic(logits, winner_masks(assignment, 2), INFO,
                                **identity_kwargs((33, 33)))
    assert (result.panoptic == 2560).sum() == 5


def test_nothing_confident_gives_all_void() -> None:
    logits = class_logits((PERSON, 0.5), (SKY, 0.3))
    masks = winner_masks(np.array([[0, 1], [1, 0]]), 2)
    result = pixelwise_panoptic(logits, masks, INFO, out_size=(7, 9))
    assert result.panoptic.shape == (7, 9) and not result.panoptic.any()
    assert result.segments_info == []
    assert set(np.unique(result.semantic).tolist()) <= {PERSON, SKY}


def test_padding_is_cropped_and_resized_to_the_original() -> None:
    # 33x33 padded input (9x9 masks); the image fills the top-left 17x25, original 40x60.
    # Slot 2 only owns the padding: it must not appear in the output at all.
    mask_h = mask_w = 9
    column = torch.arange(mask_w).float()
    masks = torch.zeros(3, mask_h, mask_w)
    masks[0] = 3.0 * (3.0 - column)  # person on the left
    masks[1] = 3.0 * (column - 3.0)  # sky on the right (the valid width 25 ends at cell 6)
    masks[2, :, 7:] = 20.0        # the padding columns (input x >= 28)
    masks[2, 5:, :] = 20.0        # and rows (input y >= 20)
    logits = class_logits((PERSON, 0.9), (SKY, 0.9), (GRASS, 0.9))
    result = pixelwise_panoptic(logits, masks, INFO, out_size=(40, 60), valid_size=(17, 25),
                                input_size=(33, 33), thing_area_limit=0, stuff_area_limit=0)
    assert result.panoptic.shape == (40, 60)
    assert 11 * 256 not in result.panoptic
    # Reference: the three steps with F.interpolate, then argmax.
    upsampled = F.interpolate(masks[None], size=(33, 33), mode="bilinear", align_corners=True)
    cropped = upsampled[..., :17, :25]
    resized = F.interpolate(cropped, size=(40, 60), mode="bilinear", align_corners=False)[0]
    expected_slot = resized.argmax(0).numpy()
    expected = np.where(expected_slot == 0, 257, 2560)
    confident = resized.softmax(0).max(0).values.numpy() > 0.4
    np.testing.assert_array_equal(result.panoptic[confident], expected[confident])
    assert confident.mean() > 0.9
    # Person on the left half, sky on the right: the boundary sits where the logits cross.
    assert result.panoptic[20, 0] == 257 and result.panoptic[20, -1] == 2560


def test_maskwise_differs_from_pixelwise_where_masks_overlap() -> None:
    # Per-pixel slot probabilities given directly (log-probabilities as logits, identity resize).
    # Slot 0: person 0.99, slot 1: car 0.8, slot 2: sky 0.6 (pixel-wise drops it, mask-wise
    # keeps it: stuff threshold 0.5), slot 3: grass filler.
    logits = class_logits((PERSON, 0.99), (CAR, 0.8), (SKY, 0.6), (GRASS, 0.3))
    probs = torch.full((4, 2, 10), 0.0)
    probs[:, 0, :4] = torch.tensor([0.9, 0.05, 0.0, 0.05])[:, None]    # person only
    probs[:, 0, 4:8] = torch.tensor([0.45, 0.45, 0.0, 0.1])[:, None]   # person and car overlap
    probs[:, 0, 8:] = torch.tensor([0.05, 0.9, 0.0, 0.05])[:, None]    # car only: 2 pixels
    probs[:, 1, :] = torch.tensor([0.0, 0.05, 0.9, 0.05])[:, None]     # sky row
    masks = probs.clamp(min=1e-12).log()
    geometry = identity_kwargs((2, 10))
    pixelwise = pixelwise_panoptic(logits, masks, INFO, thing_area_limit=0, stuff_area_limit=0,
                                   **geometry).panoptic
    maskwise = maskwise_panoptic(logits, masks, INFO, thing_area_limit=0, stuff_area_limit=0,
                                 **geometry).panoptic
    person, car, sky = 257, 3 * 256 + 2, 2560
    # Pixel-wise: ties go to the first slot; the car keeps its own 2 pixels; sky dropped (0.6).
    np.testing.assert_array_equal(pixelwise, [[person] * 8 + [car] * 2, [0] * 10])
    # Mask-wise: the person (score 0.99 * 0.7) is pasted first and takes the overlap; only 2 of
    # the car's 6 pixels stay free (2 <= 0.8 * 6), so the car is dropped; sky 0.6 >= 0.5 stays.
    np.testing.assert_array_equal(maskwise, [[person] * 8 + [0] * 2, [sky] * 10])
    # With a lenient overlap threshold the car keeps its free pixels.
    lenient = maskwise_panoptic(logits, masks, INFO, overlap_threshold=0.3, thing_area_limit=0,
                                stuff_area_limit=0, **geometry).panoptic
    np.testing.assert_array_equal(lenient[0], [person] * 8 + [car] * 2)


def test_maskwise_pastes_by_score_not_slot_order() -> None:
    # Slot 0 (car, 0.75) and slot 1 (person, 0.99) both exceed 0.4 on all four pixels.
    logits = class_logits((CAR, 0.75), (PERSON, 0.99))
    masks = torch.log(torch.tensor([0.5, 0.5]))[:, None, None].expand(2, 1, 4).clone()
    geometry = identity_kwargs((1, 4))
    result = maskwise_panoptic(logits, masks, INFO, thing_area_limit=0, stuff_area_limit=0,
                               **geometry)
    np.testing.assert_array_equal(result.panoptic, [[258] * 4])  # person, slot 1 + 1
    # Ranking on mask quality alone (class_weight 0): equal scores, the stable sort keeps slot 0.
    result = maskwise_panoptic(logits, masks, INFO, class_weight=0.0, thing_area_limit=0,
                               stuff_area_limit=0, **geometry)
    np.testing.assert_array_equal(result.panoptic, [[3 * 256 + 1] * 4])
    # Class thresholds apply per kind: a 0.75 car fails a 0.8 thing threshold and the person
    # takes the pixels when the car would have come first.
    result = maskwise_panoptic(logits, masks, INFO, thing_threshold=0.8, class_weight=0.0,
                               thing_area_limit=0, stuff_area_limit=0, **geometry)
    np.testing.assert_array_equal(result.panoptic, [[258] * 4])


def test_maskwise_area_limits_and_defaults() -> None:
    logits = class_logits((PERSON, 0.9), (SKY, 0.9))
    assignment = np.zeros((3, 3), dtype=int)
    assignment[0, 0] = 1
    masks = winner_masks(assignment, 2)
    result = maskwise_panoptic(logits, masks, INFO, thing_area_limit=0, stuff_area_limit=2,
                               **identity_kwargs((3, 3)))
    np.testing.assert_array_equal(result.panoptic, np.where(assignment == 1, 0, 257))


@pytest.mark.parametrize("post_process", [pixelwise_panoptic, maskwise_panoptic])
def test_bad_shapes_are_rejected(post_process) -> None:
    logits = class_logits((PERSON, 0.9))
    with pytest.raises(ValueError, match="class channels"):
        post_process(logits[:, :-1], torch.zeros(1, 3, 3), INFO, out_size=(9, 9))
    with pytest.raises(ValueError, match="slots"):
        post_process(logits, torch.zeros(2, 3, 3), INFO, out_size=(9, 9))
    with pytest.raises(ValueError, match="valid size"):
        post_process(logits, torch.zeros(1, 3, 3), INFO, out_size=(9, 9), valid_size=(10, 9))


def test_maskwise_binary_masks_use_the_softmax_over_all_slots() -> None:
    # Pixel 0: (0.35, 0.35, 0.3), nobody exceeds 0.4 -> void, although each candidate's logit
    # is within 0.4 of the top. Pixel 1: (0.5, 0.25, 0.25) -> slot 0. Slot 2 is no candidate.
    logits = class_logits((PERSON, 0.9), (CAR, 0.9), (GRASS, 0.2))
    probs = torch.tensor([[0.35, 0.5], [0.35, 0.25], [0.3, 0.25]])[:, None, :]  # [3, 1, 2]
    result = maskwise_panoptic(logits, probs.log(), INFO, thing_area_limit=0, stuff_area_limit=0,
                               **identity_kwargs((1, 2)))
    np.testing.assert_array_equal(result.panoptic, [[0, 257]])
