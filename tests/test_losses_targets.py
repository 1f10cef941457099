"""Ground-truth building at mask resolution (cmt_deeplab.losses.targets)."""

import pytest
import torch

from cmt_deeplab.losses.targets import build_targets


def _sample(masks, labels, is_thing, void, semantic, image_id=7):
    return {
        "masks": torch.stack(list(masks)) if isinstance(masks, list) else masks.bool(),
        "labels": torch.as_tensor(labels, dtype=torch.long),
        "is_thing": torch.as_tensor(is_thing, dtype=torch.bool),
        "void": torch.as_tensor(void, dtype=torch.bool),
        "semantic": torch.as_tensor(semantic, dtype=torch.long),
        "image_id": image_id,
    }


def _toy_sample():
    """9 x 9 image, stride 4 keeps rows/cols 0, 4, 8 (a 3 x 3 grid)."""
    h = w = 9
    thing = torch.zeros(h, w, dtype=torch.bool)
    thing[0:5, 0:5] = True  # covers kept pixels (0,0) (0,4) (4,0) (4,4)
    tiny = torch.zeros(h, w, dtype=torch.bool)
    tiny[1:3, 6:8] = True  # no kept pixel: dropped at mask resolution
    stuff = torch.zeros(h, w, dtype=torch.bool)
    stuff[5:, :] = True  # kept row 8
    void = ~(thing | tiny | stuff)
    void[8, 8] = True  # crowd inside the stuff region
    stuff_masked = stuff & ~void
    semantic = torch.full((h, w), -1)
    semantic[thing] = 0
    semantic[tiny] = 1
    semantic[stuff] = 2  # crowd keeps its class
    return _sample([thing, tiny, stuff_masked], [0, 1, 2], [True, True, False], void, semantic)


def test_strided_slicing_drops_empty_masks_and_marks_void():
    targets = build_targets([_toy_sample()], stride=4)
    assert targets.gt_masks.shape == (1, 2, 3, 3)
    assert targets.gt_labels.tolist() == [[0, 2]]
    assert targets.gt_is_thing.tolist() == [[True, False]]
    assert targets.gt_valid.tolist() == [[True, True]]
    assert targets.gt_area.tolist() == [[4.0, 2.0]]
    assert targets.pixel_mask_id[0].tolist() == [[0, 0, -1], [0, 0, -1], [1, 1, -1]]
    assert targets.pixel_valid[0].tolist() == [
        [True, True, False],
        [True, True, False],
        [True, True, False],
    ]
    # Semantic keeps the crowd class at (8, 8); the dropped tiny mask's class never appears.
    assert targets.semantic[0].tolist() == [[0, 0, -1], [0, 0, -1], [2, 2, 2]]


def test_masks_are_cleared_on_void_and_padded_across_the_batch():
    first = _toy_sample()
    second = _toy_sample()
    second["masks"] = second["masks"][:1].clone()
    second["labels"], second["is_thing"] = second["labels"][:1], second["is_thing"][:1]
    second["void"] = second["void"].clone()
    second["void"][0, 0] = True  # a mask pixel declared void by the dataset
    targets = build_targets([first, second], stride=4)
    assert targets.gt_masks.shape == (2, 2, 3, 3)
    assert targets.gt_labels.tolist() == [[0, 2], [0, -1]]
    assert targets.gt_valid.tolist() == [[True, True], [True, False]]
    assert targets.gt_area[1].tolist() == [3.0, 0.0]
    assert targets.pixel_mask_id[1, 0, 0].item() == -1


def test_image_without_masks_gives_one_padding_slot():
    h = w = 5
    sample = _sample(torch.zeros(0, h, w), [], [], torch.ones(h, w), torch.full((h, w), -1))
    targets = build_targets([sample], stride=2)
    assert targets.gt_masks.shape == (1, 1, 3, 3)
    assert not targets.gt_valid.any()
    assert not targets.pixel_valid.any()


def test_errors_name_the_image():
    sample = _toy_sample()
    del sample["void"]
    with pytest.raises(KeyError, match="7"):
        build_targets([sample])
    small = _toy_sample()
    small["image_id"] = "small"
    for key in ("masks", "void", "semantic"):
        small[key] = small[key][..., :5, :5]
    with pytest.raises(ValueError, match="small"):
        build_targets([_toy_sample(), small])
    overlap = _toy_sample()
    overlap["masks"] = torch.cat([overlap["masks"], overlap["masks"][:1]])
    overlap["labels"] = torch.tensor([0, 1, 2, 3])
    overlap["is_thing"] = torch.tensor([True, True, False, True])
    with pytest.raises(ValueError, match="overlapping"):
        build_targets([overlap])
