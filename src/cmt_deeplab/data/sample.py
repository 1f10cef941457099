"""Turning one image and its panoptic segment-id map into the dataset sample contract.

A sample (one image) is a dict::

    image     float32 [3, H, W]  pixel / 127.5 - 1, so padding with 0 is mean grey
    masks     bool    [M, H, W]  one per non-crowd thing instance, one per stuff class present
    labels    int64   [M]        contiguous class (DatasetInfo order, things first)
    is_thing  bool    [M]
    void      bool    [H, W]     unlabeled, crowd and padding pixels
    semantic  int64   [H, W]     contiguous class per pixel; crowd keeps its class;
                                 IGNORE_LABEL (-1) on unlabeled pixels and padding
    panoptic  int64   [H, W]     category_id * label_divisor + instance, 0 = void
    image_id, file_name, orig_size (H0, W0)

In ``panoptic`` a thing instance gets ``instance = 1, 2, ...`` counted per category in
``segments_info`` order, a stuff class gets ``instance = 0``, and a **crowd** region of a thing
class also gets ``instance = 0`` (a thing category with instance 0 is how an evaluator
recognises crowd, as in Cityscapes' own id maps). Several stuff segments of one class merge into
one mask, as the model predicts one mask per stuff class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cmt_deeplab.data.metadata import IGNORE_LABEL, DatasetInfo


@dataclass(frozen=True)
class Segment:
    """One ``segments_info`` record, resolved against the dataset's categories."""

    id: int  # segment id in the PNG (R + 256 G + 256^2 B)
    category_id: int  # the dataset's category id
    label: int  # contiguous class index
    isthing: bool
    iscrowd: bool


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float32 in ``[-1, 1]`` (pixel / 127.5 - 1)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return tensor / 127.5 - 1.0


def build_sample(
    image: np.ndarray,
    segment_ids: np.ndarray,
    segments: list[Segment],
    info: DatasetInfo,
    image_id: int | str,
    file_name: str,
) -> dict[str, Any]:
    """Builds the sample dict from ``image [H, W, 3]`` uint8 and ``segment_ids [H, W]`` int64.

    ``segments`` must already be validated: unique ids, every PNG id but 0 listed and every
    listed id present (see ``coco_panoptic.find_segment_problems``).
    """
    height, width = segment_ids.shape
    assert image.shape[:2] == (height, width), (image.shape, segment_ids.shape)
    divisor = info.label_divisor

    # Look-up tables indexed by position in `unique_ids`, so each map is one gather.
    unique_ids, inverse = np.unique(segment_ids, return_inverse=True)
    inverse = inverse.reshape(height, width)
    row_of = {int(value): row for row, value in enumerate(unique_ids)}
    panoptic_lut = np.zeros(len(unique_ids), dtype=np.int64)
    semantic_lut = np.full(len(unique_ids), IGNORE_LABEL, dtype=np.int64)
    void_lut = np.ones(len(unique_ids), dtype=bool)

    masks: list[np.ndarray] = []
    labels: list[int] = []
    stuff_mask_index: dict[int, int] = {}
    instance_count: dict[int, int] = {}
    for segment in segments:
        row = row_of[segment.id]
        semantic_lut[row] = segment.label
        if segment.isthing and segment.iscrowd:
            panoptic_lut[row] = segment.category_id * divisor
            continue  # crowd: void for the losses, keeps its class in `semantic`
        void_lut[row] = False
        mask = inverse == row
        if not segment.isthing:
            panoptic_lut[row] = segment.category_id * divisor
            if segment.label in stuff_mask_index:
                masks[stuff_mask_index[segment.label]] |= mask
                continue
            stuff_mask_index[segment.label] = len(masks)
        else:
            instance = instance_count.get(segment.category_id, 0) + 1
            if instance >= divisor:
                raise ValueError(
                    f"{file_name}: more than {divisor - 1} instances of category "
                    f"{segment.category_id}; raise label_divisor"
                )
            instance_count[segment.category_id] = instance
            panoptic_lut[row] = segment.category_id * divisor + instance
        masks.append(mask)
        labels.append(segment.label)

    mask_array = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return {
        "image": normalize_image(image),
        "masks": torch.from_numpy(mask_array),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "is_thing": torch.tensor([info.is_thing(label) for label in labels], dtype=torch.bool),
        "void": torch.from_numpy(void_lut[inverse]),
        "semantic": torch.from_numpy(semantic_lut[inverse]),
        "panoptic": torch.from_numpy(panoptic_lut[inverse]),
        "image_id": image_id,
        "file_name": file_name,
        "orig_size": (height, width),
    }
