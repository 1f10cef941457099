"""Ground truth at mask resolution, padded into batch tensors (fact sheet §6.1).

The dataset returns one dict per image at full crop resolution (see the data contract).
The losses work at the resolution of ``pred_masks`` (stride 4), so every map is strided
sliced ``t[..., ::stride, ::stride]``, which is deeplab2's corner-aligned
``strided_downsample`` for 32k+1 crops. A mask whose area becomes 0 is dropped: it is void at
this resolution. Masks are padded to the largest count in the batch (``G``) and
``gt_valid`` tells real masks from padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from cmt_deeplab.data.metadata import IGNORE_LABEL

_REQUIRED_KEYS = ("masks", "labels", "is_thing", "void", "semantic")


@dataclass
class PanopticTargets:
    """Batched ground truth at mask resolution ``h x w`` with ``G`` padded masks.

    Attributes:
        gt_masks: ``[B, G, h, w]`` bool, disjoint, void pixels removed.
        gt_labels: ``[B, G]`` int64 contiguous class, ``-1`` for padding.
        gt_is_thing: ``[B, G]`` bool.
        gt_valid: ``[B, G]`` bool, a real mask with non-zero area.
        pixel_valid: ``[B, h, w]`` bool, the pixel belongs to a valid mask (not void).
        pixel_mask_id: ``[B, h, w]`` int64 index into ``G`` of the pixel's mask, ``-1`` void.
        semantic: ``[B, h, w]`` int64 contiguous class, ``IGNORE_LABEL`` where ignored.
    """

    gt_masks: Tensor
    gt_labels: Tensor
    gt_is_thing: Tensor
    gt_valid: Tensor
    pixel_valid: Tensor
    pixel_mask_id: Tensor
    semantic: Tensor

    @property
    def gt_area(self) -> Tensor:
        """``[B, G]`` float pixel count of each mask (0 for padding)."""
        return self.gt_masks.flatten(2).sum(-1).float()

    @property
    def batch_size(self) -> int:
        return self.gt_masks.shape[0]

    @property
    def mask_size(self) -> tuple[int, int]:
        return tuple(self.gt_masks.shape[-2:])

    def to(self, device: torch.device | str) -> PanopticTargets:
        return PanopticTargets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def repeat(self, times: int) -> PanopticTargets:
        """The batch repeated ``times`` times along its first axis (``[times x B, ...]``)."""
        return PanopticTargets(**{f.name: repeat_batch(getattr(self, f.name), times)
                                  for f in fields(self)})


def repeat_batch(tensor: Tensor, times: int) -> Tensor:
    """``[B, ...] -> [times x B, ...]``: the batch repeated along the first axis."""
    return tensor if times == 1 else tensor.repeat(times, *([1] * (tensor.dim() - 1)))


def _image_name(sample: Mapping[str, Any], index: int) -> str:
    return f"image {sample.get('image_id', index)!r} (batch index {index})"


def _check_sample(sample: Mapping[str, Any], index: int) -> None:
    name = _image_name(sample, index)
    missing = [key for key in _REQUIRED_KEYS if key not in sample]
    if missing:
        raise KeyError(f"target of {name} lacks keys {missing}")
    masks, void = sample["masks"], sample["void"]
    if masks.dim() != 3 or void.dim() != 2 or masks.shape[-2:] != void.shape:
        raise ValueError(
            f"target of {name}: masks must be [M, H, W] and void [H, W], "
            f"got {tuple(masks.shape)} and {tuple(void.shape)}"
        )
    if sample["semantic"].shape != void.shape:
        raise ValueError(
            f"target of {name}: semantic shape {tuple(sample['semantic'].shape)} "
            f"differs from void shape {tuple(void.shape)}"
        )
    num_masks = masks.shape[0]
    if sample["labels"].shape != (num_masks,) or sample["is_thing"].shape != (num_masks,):
        raise ValueError(
            f"target of {name}: labels {tuple(sample['labels'].shape)} and is_thing "
            f"{tuple(sample['is_thing'].shape)} must both be [{num_masks}]"
        )


def build_targets(
    samples: Sequence[Mapping[str, Any]],
    stride: int = 4,
    device: torch.device | str | None = None,
) -> PanopticTargets:
    """Strided-slices each image's ground truth to mask resolution and pads the masks.

    Args:
        samples: ``B`` dataset samples (the data contract): ``masks [M, H, W]`` bool,
            ``labels [M]``, ``is_thing [M]``, ``void [H, W]``, ``semantic [H, W]``. All
            images share one crop size.
        stride: mask-resolution stride; ``h = ceil(H / stride)``.
        device: where the result lives (default: where the samples are).

    Returns:
        ``PanopticTargets`` with ``G = max(1, max_b M_b)`` padded mask slots.
    """
    if len(samples) == 0:
        raise ValueError("build_targets needs at least one target")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    for index, sample in enumerate(samples):
        _check_sample(sample, index)
    crop = samples[0]["void"].shape
    for index, sample in enumerate(samples):
        if sample["void"].shape != crop:
            raise ValueError(
                f"target of {_image_name(sample, index)} has size {tuple(sample['void'].shape)}, "
                f"but the batch's first target has {tuple(crop)}; all crops must match"
            )
    if device is None:
        device = samples[0]["masks"].device

    per_image = []
    for index, sample in enumerate(samples):
        void = sample["void"].to(device=device, dtype=torch.bool)[::stride, ::stride]
        masks = sample["masks"].to(device=device, dtype=torch.bool)[:, ::stride, ::stride]
        # Void (crowd, unlabeled, padding) never belongs to a mask, whatever the dataset did.
        masks = masks & ~void
        if masks.shape[0] > 0 and bool((masks.sum(0) > 1).any()):
            raise ValueError(
                f"target of {_image_name(sample, index)} has overlapping masks; panoptic "
                "ground truth must assign each pixel to at most one mask"
            )
        keep = masks.flatten(1).any(-1)  # masks whose area became 0 are void
        per_image.append(
            (
                masks[keep],
                sample["labels"].to(device=device, dtype=torch.long)[keep],
                sample["is_thing"].to(device=device, dtype=torch.bool)[keep],
                sample["semantic"].to(device=device, dtype=torch.long)[::stride, ::stride],
            )
        )

    batch_size = len(samples)
    h, w = per_image[0][3].shape
    num_gt = max(1, max(item[0].shape[0] for item in per_image))
    gt_masks = torch.zeros(batch_size, num_gt, h, w, dtype=torch.bool, device=device)
    gt_labels = torch.full((batch_size, num_gt), -1, dtype=torch.long, device=device)
    gt_is_thing = torch.zeros(batch_size, num_gt, dtype=torch.bool, device=device)
    gt_valid = torch.zeros(batch_size, num_gt, dtype=torch.bool, device=device)
    semantic = torch.full((batch_size, h, w), IGNORE_LABEL, dtype=torch.long, device=device)
    for b, (masks, labels, is_thing, sem) in enumerate(per_image):
        count = masks.shape[0]
        gt_masks[b, :count] = masks
        gt_labels[b, :count] = labels
        gt_is_thing[b, :count] = is_thing
        gt_valid[b, :count] = True
        semantic[b] = sem

    pixel_valid = gt_masks.any(1)
    # argmax over G finds the single mask holding each valid pixel (masks are disjoint).
    pixel_mask_id = torch.where(pixel_valid, gt_masks.to(torch.uint8).argmax(1), -1)
    return PanopticTargets(
        gt_masks=gt_masks,
        gt_labels=gt_labels,
        gt_is_thing=gt_is_thing,
        gt_valid=gt_valid,
        pixel_valid=pixel_valid,
        pixel_mask_id=pixel_mask_id,
        semantic=semantic,
    )
