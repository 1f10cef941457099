"""A random batch that follows the sample contract: one training step without a dataset.

``train --dry-run`` without data, the cost table's training memory, the DDP probe for unused
parameters and the speed benchmarks run on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cmt_deeplab.data.metadata import IGNORE_LABEL


def random_batch(
    batch_size: int, crop: tuple[int, int], num_classes: int, num_thing_classes: int,
    seed: int = 0,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Random images ``[B, 3, H, W]`` in ``[-1, 1]`` and horizontal-band targets.

    Each target has ``min(num_classes, 8)`` full-width bands of distinct random classes
    (``masks [M, H, W]``, ``labels [M]``, ``is_thing [M]``, ``semantic [H, W]``), no void.
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
