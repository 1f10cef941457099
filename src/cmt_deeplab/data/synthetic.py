"""A synthetic panoptic dataset in COCO layout: the project's benchmark and demo data.

Each image is a few textured background regions (stuff: stripes, checker, noise, gradient) with
2-6 shapes on top (things: circle, square, triangle, star) that touch, overlap and occlude one
another, at varying scales, rotations and colours, plus pixel noise. Colours are drawn at random
for every class, so only shape and texture tell the classes apart. With ``crowd_prob > 0`` some
images get a crowd region: a cluster of small shapes of one thing class labelled as one
``iscrowd`` segment.

Every image comes from ``np.random.default_rng([seed, crc32(split), index])``: the same
arguments give byte-identical files, and two splits differ even with the same seed.

Segment ids: ``category_id * 1000`` for a stuff class, ``category_id * 1000 + k`` for the k-th
thing segment of a category. A thing or stuff segment left with fewer than ``min_area`` visible
pixels (mostly hidden) is turned into void rather than kept as an unlearnable speck.
"""

from __future__ import annotations

import contextlib
import io
import math
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cmt_deeplab.data.coco_panoptic import SplitPaths
from cmt_deeplab.data.metadata import Category, DatasetInfo
from cmt_deeplab.data.panoptic_png import id2rgb
from cmt_deeplab.data.synthetic_drawing import distinct_colour, shaded, shape_mask, texture
from cmt_deeplab.utils.io import atomic_write_bytes, atomic_write_json

#: The catalogue: (id, name, isthing, colour for visualisation). Ids are deliberately not
#: contiguous so that the reader's id -> class mapping is exercised.
SYNTHETIC_CATEGORIES: tuple[Category, ...] = (
    Category(1, "circle", True, (220, 20, 60)),
    Category(2, "square", True, (0, 130, 200)),
    Category(3, "triangle", True, (255, 180, 0)),
    Category(4, "star", True, (60, 180, 75)),
    Category(11, "stripes", False, (128, 64, 128)),
    Category(12, "checker", False, (70, 70, 70)),
    Category(13, "noise", False, (107, 142, 35)),
    Category(14, "gradient", False, (70, 130, 180)),
)

#: More classes, drawn on request only (``categories=``): a class list the default set never
#: shows, for fine-tuning a model trained on the default set to new classes.
MORE_SYNTHETIC_CATEGORIES: tuple[Category, ...] = (
    Category(5, "hexagon", True, (145, 30, 180)),
    Category(6, "cross", True, (240, 50, 230)),
    Category(7, "ring", True, (0, 128, 128)),
    Category(15, "dots", False, (170, 110, 40)),
    Category(16, "waves", False, (128, 128, 0)),
)

_ID_STEP = 1000  # segment id = category_id * 1000 + k


@dataclass(frozen=True)
class SyntheticConfig:
    """What varies per image, in pixels at ``size`` (radii scale with the image)."""

    size: int = 96
    min_regions: int = 2
    max_regions: int = 4
    min_things: int = 2
    max_things: int = 6
    min_radius: float = 0.08  # fraction of size
    max_radius: float = 0.2
    near_prob: float = 0.5  # a new shape is put against an earlier one (touch / overlap)
    min_area: float = 0.002  # fraction of size^2: smaller visible segments become void
    noise_std: tuple[float, float] = (2.0, 8.0)
    crowd_prob: float = 0.0


def synthetic_categories(names: Sequence[str] | None = None) -> list[Category]:
    """The default classes, or the named ones of the whole catalogue (default and more; at
    least one thing and one stuff class), in id order."""
    if not names:
        return list(SYNTHETIC_CATEGORIES)
    catalogue = sorted((*SYNTHETIC_CATEGORIES, *MORE_SYNTHETIC_CATEGORIES), key=lambda c: c.id)
    by_name = {c.name: c for c in catalogue}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {list(by_name)}")
    chosen = [c for c in catalogue if c.name in set(names)]
    if not any(c.isthing for c in chosen) or all(c.isthing for c in chosen):
        raise ValueError(f"need at least one thing and one stuff category, got {list(names)}")
    return chosen


def synthetic_dataset_info(names: Sequence[str] | None = None) -> DatasetInfo:
    return DatasetInfo(synthetic_categories(names), label_divisor=256, name="synthetic")


def render_synthetic_image(
    rng: np.random.Generator, config: SyntheticConfig, categories: Sequence[Category]
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One image: ``(image [S, S, 3] uint8, segment ids [S, S] int64, segments_info)``."""
    size = config.size
    things = [c for c in categories if c.isthing]
    stuffs = [c for c in categories if not c.isthing]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    ids = np.zeros((size, size), dtype=np.int64)
    crowd_ids: set[int] = set()

    # Stuff: a warped Voronoi partition, one texture per region.
    regions = _stuff_regions(rng, config, yy, xx)
    for region in range(int(regions.max()) + 1):
        inside = regions == region
        if not inside.any():
            continue
        category = stuffs[int(rng.integers(len(stuffs)))]
        canvas[inside] = texture(category.name, rng, yy, xx, size)[inside]
        ids[inside] = category.id * _ID_STEP

    next_instance: dict[int, int] = {}

    def new_id(category: Category) -> int:
        next_instance[category.id] = next_instance.get(category.id, 0) + 1
        return category.id * _ID_STEP + next_instance[category.id]

    if rng.random() < config.crowd_prob:
        category = things[int(rng.integers(len(things)))]
        segment_id = new_id(category)
        crowd_ids.add(segment_id)
        box = rng.uniform(0.2, 0.35) * size
        corner = rng.uniform(0, size - box, 2)
        for _ in range(int(rng.integers(6, 13))):
            centre = corner + rng.uniform(0, box, 2)
            radius = rng.uniform(0.03, 0.05) * size
            mask = shape_mask(category.name, centre, radius, rng.uniform(0, 2 * math.pi), size)
            colour = rng.uniform(0, 255, 3)
            canvas[mask] = colour
            ids[mask] = segment_id

    placed: list[tuple[np.ndarray, float, np.ndarray]] = []  # (centre, radius, colour)
    for _ in range(int(rng.integers(config.min_things, config.max_things + 1))):
        category = things[int(rng.integers(len(things)))]
        radius = rng.uniform(config.min_radius, config.max_radius) * size
        if placed and rng.random() < config.near_prob:
            anchor, anchor_radius, _ = placed[int(rng.integers(len(placed)))]
            angle = rng.uniform(0, 2 * math.pi)
            distance = anchor_radius + radius * rng.uniform(0.3, 1.1)
            centre = anchor + distance * np.array([math.sin(angle), math.cos(angle)])
        else:
            centre = rng.uniform(0.15 * size, 0.85 * size, 2)
        mask = shape_mask(category.name, centre, radius, rng.uniform(0, 2 * math.pi), size)
        if not mask.any():
            continue
        background = canvas[mask].mean(axis=0)
        colour = distinct_colour(rng, [background] + [c for _, _, c in placed])
        canvas[mask] = shaded(colour, rng, yy, xx, size)[mask]
        ids[mask] = new_id(category)
        placed.append((centre, radius, colour))

    # Mostly hidden segments become void: a few pixels of a shape carry no learnable signal.
    min_area = max(1, round(config.min_area * size * size))
    unique, counts = np.unique(ids, return_counts=True)
    for segment_id, count in zip(unique.tolist(), counts.tolist(), strict=True):
        if segment_id and count < min_area:
            ids[ids == segment_id] = 0

    brightness = rng.uniform(0.9, 1.1)
    noise = rng.normal(0.0, rng.uniform(*config.noise_std), canvas.shape)
    image = np.clip(np.rint(canvas * brightness + noise), 0, 255).astype(np.uint8)
    return image, ids, _segments_info(ids, crowd_ids)


def generate_synthetic_dataset(
    out_root: str | Path,
    split: str = "train",
    num_images: int = 100,
    size: int = 96,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    image_format: str = "png",
    crowd_prob: float = 0.0,
    workers: int = 1,
) -> SplitPaths:
    """Writes ``out_root/split/*``, ``out_root/annotations/panoptic_split.json`` and
    ``out_root/annotations/panoptic_split/*.png`` (COCO panoptic layout), atomically per file.

    Returns the three paths, ready for ``CocoPanopticDataset(*paths)``.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    if not 0.0 <= crowd_prob <= 1.0:
        raise ValueError(f"crowd_prob must lie in [0, 1], got {crowd_prob}")
    chosen = synthetic_categories(categories)
    config = SyntheticConfig(size=size, crowd_prob=crowd_prob)
    root = Path(out_root)
    paths = SplitPaths(root / split, root / "annotations" / f"panoptic_{split}.json",
                       root / "annotations" / f"panoptic_{split}")
    paths.images_dir.mkdir(parents=True, exist_ok=True)
    paths.panoptic_dir.mkdir(parents=True, exist_ok=True)

    jobs = [(index, seed, split, config, chosen, image_format) for index in range(num_images)]
    records = []
    # Rendering is CPU work (processes); the atomic writes mostly wait on fsync (threads).
    with ThreadPoolExecutor(8) as writer, contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers))
            rendered = pool.map(_render_one, jobs, chunksize=16)
        else:
            rendered = map(_render_one, jobs)
        writes = []
        for image_record, annotation, image_bytes, png_bytes in rendered:
            records.append((image_record, annotation))
            writes.append(writer.submit(atomic_write_bytes,
                                        paths.images_dir / image_record["file_name"], image_bytes))
            writes.append(writer.submit(atomic_write_bytes,
                                        paths.panoptic_dir / annotation["file_name"], png_bytes))
        for write in writes:
            write.result()  # re-raises a failed write

    data = {
        "info": {"description": f"cmt-deeplab synthetic panoptic dataset, split {split}, "
                                f"seed {seed}, {size}x{size}"},
        "licenses": [],
        "images": [image for image, _ in records],
        "annotations": [annotation for _, annotation in records],
        "categories": [
            {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color),
             "supercategory": "shape" if c.isthing else "texture"}
            for c in chosen
        ],
    }
    atomic_write_json(paths.annotations_json, data)
    return paths


def _render_one(job: tuple) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Image ``index``: its JSON records and the encoded image and panoptic PNG."""
    index, seed, split, config, categories, image_format = job
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    image, ids, segments_info = render_synthetic_image(rng, config, categories)
    image_id = index + 1
    stem = f"{image_id:012d}"
    image_buffer, png_buffer = io.BytesIO(), io.BytesIO()
    if image_format == "jpg":
        Image.fromarray(image).save(image_buffer, format="JPEG", quality=95)
    else:
        Image.fromarray(image).save(image_buffer, format="PNG")
    Image.fromarray(id2rgb(ids)).save(png_buffer, format="PNG")
    image_record = {"id": image_id, "file_name": f"{stem}.{image_format}",
                    "height": config.size, "width": config.size}
    annotation = {"image_id": image_id, "file_name": f"{stem}.png",
                  "segments_info": segments_info}
    return image_record, annotation, image_buffer.getvalue(), png_buffer.getvalue()


def _segments_info(ids: np.ndarray, crowd_ids: set[int]) -> list[dict[str, Any]]:
    segments = []
    for segment_id in np.unique(ids).tolist():
        if segment_id == 0:
            continue
        mask = ids == segment_id
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        segments.append({
            "id": segment_id,
            "category_id": segment_id // _ID_STEP,
            "iscrowd": int(segment_id in crowd_ids),
            "area": int(mask.sum()),
            "bbox": [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                     int(rows[-1] - rows[0] + 1)],
        })
    return segments


def _stuff_regions(
    rng: np.random.Generator, config: SyntheticConfig, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """``[S, S]`` region index: Voronoi cells of random points with wavy borders."""
    size = config.size
    count = int(rng.integers(config.min_regions, config.max_regions + 1))
    points = rng.uniform(0, size, (count, 2)).astype(np.float32)
    amplitude = rng.uniform(0.0, 0.08) * size
    frequency = rng.uniform(1.0, 3.0) * 2 * math.pi / size
    phases = rng.uniform(0, 2 * math.pi, 2)
    warped_y = yy + amplitude * np.sin(xx * frequency + phases[0])
    warped_x = xx + amplitude * np.sin(yy * frequency + phases[1])
    distance = (warped_y[None] - points[:, 0, None, None]) ** 2 + (
        warped_x[None] - points[:, 1, None, None]) ** 2
    return distance.argmin(axis=0)
