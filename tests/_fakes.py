"""Test fakes shared by the predictor and ``predict`` CLI tests: a deterministic colour model.

``ColourModel`` follows the model-output contract with known answers; ``scene`` draws the
images it is meant for; ``INFO`` is the dataset both use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.data.metadata import Category, DatasetInfo

INFO = DatasetInfo(
    [
        Category(1, "person", True, (220, 20, 60)),
        Category(3, "car", True, (0, 0, 142)),
        Category(10, "sky", False, (70, 130, 180)),
        Category(11, "grass", False, (152, 251, 152)),
    ],
    label_divisor=256,
)
PERSON_ID, SKY_ID, CAR_ID = 1 * 256 + 1, 10 * 256, 3 * 256 + 3
#: Slot colours (RGB 0..255) and the class each slot predicts.
SLOT_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (127.5, 127.5, 127.5)]
# red -> person (slot 0), green -> sky (slot 1), blue -> car (slot 2); grey -> grass, but
# unsure (0.3): the grey padding is never a confident segment.
SLOT_CLASSES = [(0, 0.95), (2, 0.95), (1, 0.95), (3, 0.3)]


class ColourModel(nn.Module):
    """Follows the model-output contract; slot ``i`` claims the pixels whose colour is nearest
    to ``SLOT_COLOURS[i]``. Per pixel and per image, so its answers are known exactly."""

    def __init__(self, info: DatasetInfo = INFO) -> None:
        super().__init__()
        colours = torch.tensor(SLOT_COLOURS) / 127.5 - 1.0
        self.register_buffer("colours", colours[:, :, None, None])  # [N, 3, 1, 1]
        logits = torch.zeros(len(SLOT_CLASSES), info.num_classes + 1)
        for slot, (contiguous, confidence) in enumerate(SLOT_CLASSES):
            others = info.num_classes  # channels at 0
            logits[slot, contiguous] = float(np.log(confidence * others / (1 - confidence)))
        self.register_buffer("class_logits", logits)
        self.input_shapes: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.input_shapes.append(tuple(images.shape))
        pooled = images[..., ::4, ::4]  # [B, 3, h, w], h = ceil(H / 4)
        distance = (pooled[:, None] - self.colours[None]).pow(2).sum(dim=2)  # [B, N, h, w]
        return {
            "pred_logits": self.class_logits.expand(images.shape[0], -1, -1),
            "pred_masks": -4.0 * distance,
            "pixel_feature": F.normalize(pooled, dim=1),
        }


def scene(height: int, width: int) -> np.ndarray:
    """Red left half, green right half, a blue square in the middle."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, : width // 2, 0] = 255
    image[:, width // 2:, 1] = 255
    top, left, side = height // 3, width // 3, min(height, width) // 3
    image[top:top + side, left:left + side] = (0, 0, 255)
    return image
