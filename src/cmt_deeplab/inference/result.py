"""The panoptic prediction of one image, and the COCO-style segment records it carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cmt_deeplab.data.metadata import DatasetInfo


@dataclass
class PanopticResult:
    """Panoptic prediction of one image at its original size ``[H0, W0]``.

    Attributes:
        panoptic: int64 ``[H0, W0]``: ``category_id * label_divisor + instance``, 0 = void.
            Dataset category ids; things have instance = slot + 1, stuff instance 0 (all slots
            of one stuff class are one segment).
        segments_info: one dict per segment in ``panoptic``: ``id`` (its value in ``panoptic``),
            ``category_id``, ``isthing``, ``score`` (class confidence of its best slot), ``area``
            (pixels) and ``bbox`` ``[x, y, w, h]``; sorted by id.
        semantic: int64 ``[H0, W0]``: contiguous class per pixel from the threshold-free pass
            (deeplab2 evaluates mIoU this way), ``IGNORE_LABEL`` (-1) only where nothing applies.
    """

    panoptic: np.ndarray
    segments_info: list[dict[str, Any]] = field(default_factory=list)
    semantic: np.ndarray | None = None

    def to_coco(self, image_id: int | str, file_name: str) -> dict[str, Any]:
        """The COCO panoptic results record of this image (``file_name`` = the PNG's name)."""
        return {
            "image_id": image_id,
            "file_name": file_name,
            "segments_info": [
                {
                    "id": s["id"],
                    "category_id": s["category_id"],
                    "iscrowd": 0,
                    "bbox": s["bbox"],
                    "area": s["area"],
                    "score": s["score"],
                }
                for s in self.segments_info
            ],
        }


def segments_from_panoptic(
    panoptic: torch.Tensor, score_map: torch.Tensor, info: DatasetInfo
) -> list[dict[str, Any]]:
    """Segment records of a panoptic map.

    Args:
        panoptic: int64 ``[H, W]`` panoptic ids (0 = void).
        score_map: float ``[H, W]`` per-pixel score; a segment's score is its maximum.
        info: categories and label divisor of ``panoptic``.
    """
    height, width = panoptic.shape
    flat = panoptic.reshape(-1)
    labelled = flat > 0
    if not bool(labelled.any()):
        return []
    ids, inverse, areas = torch.unique(flat[labelled], return_inverse=True, return_counts=True)
    positions = torch.nonzero(labelled).squeeze(1)
    ys, xs = positions // width, positions % width
    count = ids.numel()

    def reduce(values: torch.Tensor, how: str, initial: float) -> torch.Tensor:
        out = torch.full((count,), initial, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, inverse, values, reduce=how, include_self=False)

    y0, y1 = reduce(ys, "amin", height), reduce(ys, "amax", -1)
    x0, x1 = reduce(xs, "amin", width), reduce(xs, "amax", -1)
    scores = reduce(score_map.reshape(-1)[labelled].float(), "amax", 0.0)

    segments = []
    rows = zip(*(t.tolist() for t in (ids, areas, x0, y0, x1, y1, scores)), strict=True)
    for segment_id, area, left, top, right, bottom, score in rows:
        category_id = segment_id // info.label_divisor
        segments.append({
            "id": int(segment_id),
            "category_id": int(category_id),
            "isthing": bool(info.is_thing(info.contiguous_id(category_id))),
            "score": round(float(score), 5),
            "area": int(area),
            "bbox": [int(left), int(top), int(right - left + 1), int(bottom - top + 1)],
        })
    return segments
