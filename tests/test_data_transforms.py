"""Transforms: known geometry, padding values, label consistency, reproducibility; collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmt_deeplab.data.collate import collate_batch
from cmt_deeplab.data.metadata import IGNORE_LABEL
from cmt_deeplab.data.transforms import EvalTransform, TrainTransform, resize_crop_pad


def _sample(height: int = 4, width: int = 6) -> dict:
    """Thing 1 on the left columns, thing 2 on the right, stuff in the middle, one void pixel."""
    panoptic = torch.full((height, width), 10 * 256, dtype=torch.int64)
    panoptic[:, :2] = 256 + 1
    panoptic[:, -2:] = 2 * 256 + 1
    panoptic[0, 2] = 0
    values = [256 + 1, 2 * 256 + 1, 10 * 256]
    masks = torch.stack([panoptic == v for v in values])
    semantic = torch.full((height, width), IGNORE_LABEL, dtype=torch.int64)
    for label, mask in enumerate(masks):
        semantic[mask] = label
    image = torch.arange(3 * height * width, dtype=torch.float32).reshape(3, height, width)
    return {
        "image": image / image.max() * 2 - 1,
        "masks": masks, "labels": torch.tensor([0, 1, 2]),
        "is_thing": torch.tensor([True, True, False]),
        "void": panoptic == 0, "semantic": semantic, "panoptic": panoptic,
        "image_id": 7, "file_name": "x.png", "orig_size": (height, width),
    }


def _assert_consistent(sample: dict) -> None:
    masks, panoptic = sample["masks"], sample["panoptic"]
    assert masks.shape[-2:] == panoptic.shape == sample["void"].shape == sample["semantic"].shape
    assert masks.shape[0] == len(sample["labels"]) == len(sample["is_thing"])
    assert bool(masks.flatten(1).any(1).all()), "empty masks must be dropped"
    assert len(masks) > 0 and int(masks.sum(0).max()) <= 1
    assert torch.equal(~masks.any(0), sample["void"])
    for mask, label in zip(masks, sample["labels"], strict=True):
        assert len(panoptic[mask].unique()) == 1
        assert bool((sample["semantic"][mask] == label).all())
    assert bool((sample["semantic"][sample["void"]] == IGNORE_LABEL).all())


def test_upscale_by_two_repeats_label_pixels():
    sample = _sample()
    out = resize_crop_pad(sample, (8, 12), (8, 12))
    expected = sample["panoptic"].repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out["panoptic"], expected)
    assert out["image"].shape == (3, 8, 12)
    _assert_consistent(out)


def test_crop_offset_and_padding_values():
    sample = _sample()
    out = resize_crop_pad(sample, (4, 6), (5, 5), offset=(1, 2))
    # rows 1..3 and columns 2..5 of the original, then padding.
    assert torch.equal(out["panoptic"][:3, :4], sample["panoptic"][1:, 2:])
    assert torch.equal(out["image"][:, :3, :4], sample["image"][:, 1:, 2:])
    assert bool((out["image"][:, 3:] == 0).all()) and bool((out["image"][:, :, 4:] == 0).all())
    pad = torch.zeros(5, 5, dtype=torch.bool)
    pad[3:] = True
    pad[:, 4:] = True
    assert bool(out["void"][pad].all())
    assert bool((out["semantic"][pad] == IGNORE_LABEL).all())
    assert bool((out["panoptic"][pad] == 0).all())
    assert not bool(out["masks"][:, pad].any())
    # Thing 1 (columns 0-1) fell outside the window: its mask is dropped with its label.
    assert out["labels"].tolist() == [1, 2] and out["is_thing"].tolist() == [True, False]
    _assert_consistent(out)


def test_flip_mirrors_everything():
    sample = _sample()
    out = resize_crop_pad(sample, (4, 6), (4, 6), flip=True)
    for key in ("image", "masks", "void", "semantic", "panoptic"):
        assert torch.equal(out[key], sample[key].flip(-1)), key
    assert out["image_id"] == 7 and out["orig_size"] == (4, 6)


def test_downscale_picks_half_pixel_nearest():
    panoptic = torch.arange(12, dtype=torch.int64).reshape(1, 12).repeat(2, 1)
    out = resize_crop_pad({"image": torch.zeros(3, 2, 12), "panoptic": panoptic}, (2, 4), (2, 4))
    # output column j samples source floor((j + 0.5) * 3) = 1, 4, 7, 10
    assert out["panoptic"][0].tolist() == [1, 4, 7, 10]


def test_scale_choices_match_max_deeplab():
    transform = TrainTransform(641)
    np.testing.assert_allclose(transform.scales, np.arange(5, 16) / 10)
    assert TrainTransform(8, scale_step=0).scales is None


def test_train_transform_resizes_longer_side_to_crop():
    sample = _sample(40, 60)
    transform = TrainTransform(30, min_scale=1.0, max_scale=1.0, flip_prob=0.0)
    out = transform(sample, np.random.default_rng(0))
    assert out["image"].shape == (3, 30, 30)
    # 40x60 fits a 30 crop as 20x30: rows 20.. are padding (void), rows above are image.
    assert bool(out["void"][20:].all()) and not bool(out["void"][:20, 0].any())
    _assert_consistent(out)
    out = TrainTransform(30, 1.0, 1.0, resize_to_crop=False, flip_prob=0.0)(sample)
    assert out["image"].shape == (3, 30, 30) and not bool(out["void"][1:, :].all())


def test_train_transform_random_is_reproducible_and_varies():
    sample = _sample(20, 30)
    transform = TrainTransform(16, min_scale=0.5, max_scale=2.0)
    first = transform(sample, np.random.default_rng(5))
    second = transform(sample, np.random.default_rng(5))
    for key in ("image", "masks", "panoptic"):
        assert torch.equal(first[key], second[key])
    outputs = {transform(sample, np.random.default_rng(seed))["panoptic"].numpy().tobytes()
               for seed in range(12)}
    assert len(outputs) > 6
    with_torch = [transform(sample, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(with_torch[0]["image"], with_torch[1]["image"])
    seeded = [TrainTransform(16, seed=4)(sample)["panoptic"] for _ in range(2)]
    assert torch.equal(*seeded)


def test_train_transform_flip_rate():
    sample = _sample()
    transform = TrainTransform((4, 6), min_scale=1.0, max_scale=1.0, resize_to_crop=False)
    rng = np.random.default_rng(0)
    flips = sum(torch.equal(transform(sample, rng)["panoptic"], sample["panoptic"].flip(-1))
                for _ in range(400))
    assert 160 < flips < 240


def test_train_transform_keeps_labels_consistent_on_many_draws():
    sample = _sample(23, 37)
    transform = TrainTransform((16, 24), min_scale=0.3, max_scale=2.5, scale_step=0.1)
    rng = np.random.default_rng(1)
    for _ in range(30):
        _assert_consistent(transform(sample, rng))


def test_eval_transform_resize_and_pad():
    sample = _sample(40, 60)
    out = EvalTransform(resize_longer=30, pad_to=32)(sample)
    assert out["image"].shape == (3, 32, 32) and out["valid_size"] == (20, 30)
    assert out["scale"] == pytest.approx(0.5)
    assert bool(out["void"][20:].all()) and bool(out["void"][:, 30:].all())
    assert bool((out["image"][:, 20:] == 0).all())
    _assert_consistent(out)
    same = EvalTransform()(sample)
    assert torch.equal(same["panoptic"], sample["panoptic"]) and same["scale"] == 1.0
    with pytest.raises(ValueError, match="exceeds pad_to"):
        EvalTransform(resize_longer=40, pad_to=32)(sample)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="min_scale"):
        TrainTransform(8, min_scale=2.0, max_scale=1.0)
    with pytest.raises(ValueError, match="flip_prob"):
        TrainTransform(8, flip_prob=1.5)
    with pytest.raises(ValueError, match="crop_size: bad size 0"):
        TrainTransform(0)


def test_collate_batch_stacks_images_and_keeps_targets():
    transform = TrainTransform(8)
    samples = [transform(_sample(10 + i, 12), np.random.default_rng(i)) for i in range(3)]
    images, targets = collate_batch(samples)
    assert images.shape == (3, 3, 8, 8)
    assert torch.equal(images[1], samples[1]["image"])
    assert len(targets) == 3 and "image" not in targets[0]
    assert torch.equal(targets[2]["masks"], samples[2]["masks"])
    with pytest.raises(ValueError, match="share one size"):
        collate_batch([_sample(4, 6), _sample(5, 6)])
    with pytest.raises(ValueError, match="empty"):
        collate_batch([])
