"""Random COCO-format panoptic GT / prediction pairs, for evaluation tests and benchmarks.

GT segments are Voronoi cells of random seeds (things, crowd things and stuff, with large
random segment ids), plus void rectangles. The prediction moves each seed by a random
amount (so IoUs spread around the 0.5 threshold), sometimes changes its class, drops or
adds segments, and paints segments over GT void, so that every rule of PQ gets exercised:
matches, misses, false positives, crowd absorption and mostly-void predictions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cmt_deeplab.data.panoptic_png import write_panoptic_png
from cmt_deeplab.utils.io import atomic_write_json

#: Things and stuff interleaved, with gaps in the ids, as COCO's list has.
RANDOM_CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "bicycle", "isthing": 1},
    {"id": 7, "name": "sky", "isthing": 0},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 9, "name": "road", "isthing": 0},
    {"id": 5, "name": "dog", "isthing": 1},
    {"id": 12, "name": "grass", "isthing": 0},
    {"id": 6, "name": "cat", "isthing": 1},
    {"id": 20, "name": "wall", "isthing": 0},
]


def _voronoi(seeds: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    """``seeds [S, 2]`` (y, x) in grid units -> ``[grid_h, grid_w]`` index of the nearest seed."""
    y, x = np.mgrid[0:grid_h, 0:grid_w]
    distance = (y[..., None] - seeds[:, 0]) ** 2 + (x[..., None] - seeds[:, 1]) ** 2
    return distance.argmin(axis=-1)


def _distinct_ids(rng: np.random.Generator, count: int) -> Iterator[int]:
    """``count`` distinct random segment ids in ``[1, 256^3)``, as an iterator."""
    ids: dict[int, None] = {}  # insertion-ordered set
    while len(ids) < count:
        ids.update(dict.fromkeys(rng.integers(1, 256**3, size=count).tolist()))
    return iter(list(ids)[:count])


def _render(
    cell_ids: np.ndarray, cells: np.ndarray, scale: int, height: int, width: int
) -> np.ndarray:
    """Per-seed segment ids ``[S]`` on a Voronoi grid -> ``[H, W]`` ids at full size."""
    ids = cell_ids[cells]
    return np.repeat(np.repeat(ids, scale, axis=0), scale, axis=1)[:height, :width]


def _segments_info(
    ids: np.ndarray, category_of: dict[int, int], crowd: set[int], with_area: bool
) -> list[dict[str, Any]]:
    present, area = np.unique(ids, return_counts=True)
    segments = []
    for segment_id, count in zip(present.tolist(), area.tolist(), strict=True):
        if segment_id == 0:
            continue
        record = {"id": segment_id, "category_id": category_of[segment_id]}
        if with_area:
            record.update(iscrowd=int(segment_id in crowd), area=count)
        segments.append(record)
    return segments


def random_panoptic_pair(
    rng: np.random.Generator,
    height: int,
    width: int,
    categories: list[dict[str, Any]] = RANDOM_CATEGORIES,
    scale: int = 4,
    num_seeds: tuple[int, int] = (8, 30),
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray, list[dict[str, Any]]]:
    """One random image: ``(gt_ids [H, W], gt_segments, pred_ids [H, W], pred_segments)``."""
    things = [c["id"] for c in categories if c["isthing"]]
    stuff = [c["id"] for c in categories if not c["isthing"]]
    grid_h, grid_w = -(-height // scale), -(-width // scale)
    num = int(rng.integers(*num_seeds))
    seeds = rng.uniform(0, 1, (num, 2)) * (grid_h, grid_w)
    fresh = _distinct_ids(rng, 4 * num + 16)

    # GT: each seed is a thing instance (some crowd), a stuff class (one segment per class)
    # or void.
    gt_cell_ids = np.zeros(num, np.int64)
    seed_class = np.zeros(num, np.int64)
    category_of: dict[int, int] = {}
    crowd: set[int] = set()
    stuff_ids: dict[int, int] = {}
    for s in range(num):
        kind = rng.uniform()
        if kind < 0.08:
            continue  # void cell
        if kind < 0.55:
            segment_id, seed_class[s] = next(fresh), rng.choice(things)
            if rng.uniform() < 0.15:
                crowd.add(segment_id)
        else:
            seed_class[s] = rng.choice(stuff)
            segment_id = stuff_ids.setdefault(int(seed_class[s]), next(fresh))
        gt_cell_ids[s] = segment_id
        category_of[segment_id] = int(seed_class[s])
    gt = _render(gt_cell_ids, _voronoi(seeds, grid_h, grid_w), scale, height, width)
    void_boxes = []
    for _ in range(int(rng.integers(0, 3))):
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        box = (y0, x0, y0 + int(rng.integers(2, height // 3 + 3)),
               x0 + int(rng.integers(2, width // 3 + 3)))
        gt[box[0]:box[2], box[1]:box[3]] = 0
        void_boxes.append(box)

    # Prediction: moved seeds keep (mostly) their class; a few seeds vanish or appear.
    jitter = rng.uniform(0, 0.25) * min(grid_h, grid_w)
    pred_seeds = seeds + rng.normal(0, 1, seeds.shape) * jitter * rng.uniform(0, 1, (num, 1))
    extra = int(rng.integers(0, 4))
    pred_seeds = np.concatenate([pred_seeds, rng.uniform(0, 1, (extra, 2)) * (grid_h, grid_w)])
    pred_class = np.concatenate([seed_class, np.zeros(extra, np.int64)])
    pred_cell_ids = np.zeros(num + extra, np.int64)
    pred_category_of: dict[int, int] = {}
    pred_stuff_ids: dict[int, int] = {}
    all_ids = things + stuff
    for s in range(num + extra):
        if pred_class[s] == 0 or rng.uniform() < 0.1:
            pred_class[s] = rng.choice(all_ids)
        if rng.uniform() < 0.05:
            continue  # predicted void
        if pred_class[s] in things:
            segment_id = next(fresh)
        else:
            segment_id = pred_stuff_ids.setdefault(int(pred_class[s]), next(fresh))
        pred_cell_ids[s] = segment_id
        pred_category_of[segment_id] = int(pred_class[s])
    pred = _render(pred_cell_ids, _voronoi(pred_seeds, grid_h, grid_w), scale, height, width)
    # Segments over GT void, from fully inside a void box to mostly outside it.
    for y0, x0, y1, x1 in void_boxes:
        if rng.uniform() < 0.7:
            grow = int(rng.integers(0, max(1, (y1 - y0) // 2 + 1)))
            segment_id = next(fresh)
            pred[max(0, y0 - grow):y1 + grow, max(0, x0 - grow):x1 + grow] = segment_id
            pred_category_of[segment_id] = int(rng.choice(all_ids))

    gt_segments = _segments_info(gt, category_of, crowd, with_area=True)
    if category_of and rng.uniform() < 0.1:  # a GT segment listed but absent from the PNG
        gt_segments.append({"id": next(fresh), "category_id": int(rng.choice(all_ids)),
                            "iscrowd": 0, "area": 0})
    pred_segments = _segments_info(pred, pred_category_of, set(), with_area=False)
    return gt, gt_segments, pred, pred_segments


def write_random_dataset(
    root: str | Path,
    num_images: int,
    height: int,
    width: int,
    seed: int = 0,
    categories: list[dict[str, Any]] = RANDOM_CATEGORIES,
    scale: int = 4,
) -> dict[str, Path]:
    """Writes ``num_images`` random pairs under ``root`` in COCO panoptic format.

    Image ``i`` depends on ``(seed, i)`` only. Returns the paths ``gt_json``, ``gt_dir``,
    ``pred_json``, ``pred_dir``.
    """
    root = Path(root)
    paths = {"gt_json": root / "gt.json", "gt_dir": root / "gt",
             "pred_json": root / "pred.json", "pred_dir": root / "pred"}
    gt_json: dict[str, Any] = {"images": [], "annotations": [], "categories": categories}
    pred_json: dict[str, Any] = {"annotations": []}
    for index in range(num_images):
        gt, gt_segments, pred, pred_segments = random_panoptic_pair(
            np.random.default_rng([seed, index]), height, width, categories, scale=scale
        )
        file_name = f"{index:06d}.png"
        write_panoptic_png(paths["gt_dir"] / file_name, gt)
        write_panoptic_png(paths["pred_dir"] / file_name, pred)
        gt_json["images"].append(
            {"id": index, "file_name": f"{index:06d}.jpg", "height": height, "width": width}
        )
        gt_json["annotations"].append(
            {"image_id": index, "file_name": file_name, "segments_info": gt_segments}
        )
        pred_json["annotations"].append(
            {"image_id": index, "file_name": file_name, "segments_info": pred_segments}
        )
    atomic_write_json(paths["gt_json"], gt_json)
    atomic_write_json(paths["pred_json"], pred_json)
    return paths
