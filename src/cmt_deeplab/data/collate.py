"""Batching samples: images stacked, targets kept per image (their mask counts differ)."""

from __future__ import annotations

from typing import Any

import torch


def collate_batch(
    samples: list[dict[str, Any]],
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """``samples`` -> ``(images [B, 3, H, W], targets)``.

    ``targets[b]`` is sample ``b`` without its ``image`` (masks ``[M_b, H, W]``, labels, void,
    semantic, panoptic and the metadata). All images must share one size: use a transform that
    crops or pads (``TrainTransform``, ``EvalTransform(pad_to=...)``).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    sizes = {tuple(sample["image"].shape) for sample in samples}
    if len(sizes) > 1:
        names = ", ".join(
            f"{sample.get('file_name', '?')} {tuple(sample['image'].shape[-2:])}"
            for sample in samples[:4]
        )
        raise ValueError(
            f"images in a batch must share one size, got {sorted(sizes)} ({names}); crop or pad "
            "them to one size (TrainTransform, or EvalTransform with pad_to)"
        )
    images = torch.stack([sample["image"] for sample in samples])
    targets = [{k: v for k, v in sample.items() if k != "image"} for sample in samples]
    return images, targets
