"""The datasets a training config names, and a random stand-in batch for ``--dry-run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmt_deeplab.data.arguments import open_dataset
from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset
from cmt_deeplab.data.metadata import IGNORE_LABEL
from cmt_deeplab.data.transforms import TrainTransform
from cmt_deeplab.engine.config import DataSection, TrainConfig


def has_split(data: DataSection, split: str) -> bool:
    paths = [getattr(data, f"{split}_{name}") for name in ("images", "annotations",
                                                            "panoptic_dir")]
    return getattr(data, f"{split}_split") is not None or any(p is not None for p in paths)


def open_split(
    data: DataSection, split: str, transform: Any = None, seed: int | None = None
) -> CocoPanopticDataset:
    """Split ``split`` (``"train"`` or ``"val"``) of the config: ``root`` + ``{split}_split``,
    or the three ``{split}_images / _annotations / _panoptic_dir`` paths."""
    kwargs: dict[str, Any] = {"transform": transform, "skip_bad": data.skip_bad, "seed": seed}
    if data.label_divisor is not None:
        kwargs["label_divisor"] = data.label_divisor
    name = getattr(data, f"{split}_split")
    keys = [f"{split}_{n}" for n in ("images", "annotations", "panoptic_dir")]
    paths = [getattr(data, key) for key in keys]
    if name is not None and any(p is not None for p in paths):
        raise ValueError(f"data.{split}_split and data.{keys[0]}/... both given; use one")
    if name is not None:
        if data.root is None:
            raise ValueError(f"data.{split}_split={name!r} needs data.root (--data ROOT)")
        return open_dataset(data.root, name, **kwargs)
    missing = [f"data.{key}" for key, p in zip(keys, paths, strict=True) if p is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} missing: give data.{split}_split with "
                         f"data.root, or all of data.{', data.'.join(keys)}")
    return CocoPanopticDataset(*(Path(p) for p in paths), **kwargs)


def train_transform(config: TrainConfig) -> TrainTransform:
    aug = config.augmentation
    return TrainTransform(tuple(config.input.crop), min_scale=aug.min_scale,
                          max_scale=aug.max_scale, scale_step=aug.scale_step,
                          resize_to_crop=aug.resize_to_crop, flip_prob=aug.flip_prob)


def random_batch(
    batch_size: int, crop: tuple[int, int], num_classes: int, num_thing_classes: int,
    seed: int = 0,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Random images and horizontal-band targets that follow the sample contract.

    Enough to run one training step (memory and speed) without a dataset.
    """
    rng = np.random.default_rng(seed)
    height, width = crop
    images = torch.from_numpy(rng.uniform(-1, 1, (batch_size, 3, height, width))).float()
    targets = []
    num_masks = min(num_classes, 8)
    bands = np.linspace(0, height, num_masks + 1).round().astype(int)
    for index in range(batch_size):
        labels = rng.choice(num_classes, num_masks, replace=False)
        masks = torch.zeros(num_masks, height, width, dtype=torch.bool)
        semantic = torch.full((height, width), IGNORE_LABEL, dtype=torch.long)
        for m in range(num_masks):
            masks[m, bands[m]:bands[m + 1]] = True
            semantic[bands[m]:bands[m + 1]] = int(labels[m])
        targets.append({
            "masks": masks,
            "labels": torch.from_numpy(labels).long(),
            "is_thing": torch.from_numpy(labels < num_thing_classes),
            "void": torch.zeros(height, width, dtype=torch.bool),
            "semantic": semantic,
            "panoptic": torch.zeros(height, width, dtype=torch.long),
            "image_id": index, "file_name": f"random_{index}", "orig_size": (height, width),
        })
    return images, targets
