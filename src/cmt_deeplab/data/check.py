"""``data check``: every consistency check of a COCO panoptic split, reporting all problems.

Checks, each problem reported with its file:

- JSON: duplicate image ids, images without annotation and annotations without image record;
- files: image and PNG present and readable (images fully decoded unless ``decode_images``
  is off, then only their headers are read);
- sizes: image, PNG and the JSON's ``height``/``width`` agree;
- segments: every PNG id listed in ``segments_info`` and the reverse, no duplicate ids, known
  categories (the checks the dataset reader runs), plus ``area`` and ``bbox`` equal to the PNG's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from cmt_deeplab.data.coco_panoptic import (
    CocoPanopticDataset,
    ImageRecord,
    find_segment_problems,
    load_panoptic_json,
    segment_id_of,
)
from cmt_deeplab.data.image_io import image_size, load_image
from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.panoptic_png import read_panoptic_png


@dataclass
class CheckReport:
    """What ``check_dataset`` found: counts for the summary and the problems."""

    info: DatasetInfo
    num_images: int = 0
    segments_per_category: Counter = field(default_factory=Counter)  # category id -> count
    crowd_per_category: Counter = field(default_factory=Counter)
    images_per_category: Counter = field(default_factory=Counter)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file, message)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        thing_ids = {c.id for c in self.info.categories if c.isthing}
        things = sum(n for i, n in self.segments_per_category.items() if i in thing_ids)
        stuff = sum(n for i, n in self.segments_per_category.items() if i not in thing_ids)
        crowd = sum(self.crowd_per_category.values())
        lines = [
            f"images: {self.num_images}",
            f"categories: {self.info.num_classes} ({self.info.num_thing_classes} things, "
            f"{self.info.num_classes - self.info.num_thing_classes} stuff)",
            f"segments: {things + stuff + crowd} (things {things}, stuff {stuff}, crowd {crowd})",
            f"{'id':>5}  {'name':<24} {'kind':<5} {'segments':>8} {'crowd':>6} {'images':>7}",
        ]
        unused = 0
        for category in self.info.categories:
            if not self.images_per_category[category.id]:
                unused += 1
                continue
            lines.append(
                f"{category.id:>5}  {category.name[:24]:<24} "
                f"{'thing' if category.isthing else 'stuff':<5} "
                f"{self.segments_per_category[category.id]:>8} "
                f"{self.crowd_per_category[category.id]:>6} "
                f"{self.images_per_category[category.id]:>7}"
            )
        if unused:
            lines.append(f"       ({unused} categories without any segment not listed)")
        lines.append(f"problems: {len(self.problems)}")
        return "\n".join(lines)


def check_dataset(
    dataset: CocoPanopticDataset, decode_images: bool = True, progress: bool = False
) -> CheckReport:
    """Runs every check on ``dataset``'s files (its transform is not used)."""
    report = CheckReport(info=dataset.info)
    json_path = str(dataset.annotations_json)
    data = load_panoptic_json(dataset.annotations_json)
    report.problems += [(json_path, problem) for problem in dataset.id_problems]
    image_ids = {image["id"] for image in data.get("images", [])}
    annotated = {record.image_id for record in dataset.records}
    for image_id in image_ids - annotated:
        report.problems.append((json_path, f"image id {image_id} has no annotation"))

    records = tqdm(dataset.records, desc="checking", disable=not progress, unit="image")
    for record in records:
        report.num_images += 1
        _check_record(dataset, record, report, decode_images)
    return report


def _check_record(
    dataset: CocoPanopticDataset, record: ImageRecord, report: CheckReport, decode_images: bool
) -> None:
    png_path = dataset.png_path(record)
    where = f"image id {record.image_id}"

    def problem(path: str | Path, message: str) -> None:
        report.problems.append((str(path), f"{message} ({where})"))

    sizes = {}
    if record.image_file is None:
        problem(dataset.annotations_json, f"annotation {record.png_file} has no image record")
    else:
        image_path = dataset.image_path(record)
        try:
            sizes["image"] = (load_image(image_path).shape[:2] if decode_images
                              else image_size(image_path))
        except (FileNotFoundError, ValueError) as error:
            problem(image_path, str(error))
    try:
        segment_ids = read_panoptic_png(png_path)
        sizes["PNG"] = segment_ids.shape
    except (FileNotFoundError, ValueError) as error:
        problem(png_path, str(error))
        segment_ids = None
    if record.height is not None and record.width is not None:
        sizes["JSON"] = (int(record.height), int(record.width))
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k} {h}x{w}" for k, (h, w) in sizes.items())
        problem(png_path, f"size mismatch (HxW): {listing}")

    present = np.unique(segment_ids) if segment_ids is not None else None
    segments, problems = find_segment_problems(
        present if present is not None else [], record.segments_info, dataset.info
    )
    for message in problems:
        if segment_ids is None and "PNG" in message:
            continue  # already reported as an unreadable PNG
        problem(png_path, message)
    for segment in segments:
        key = segment.category_id
        if segment.iscrowd and segment.isthing:
            report.crowd_per_category[key] += 1
        else:
            report.segments_per_category[key] += 1
    for category_id in {segment.category_id for segment in segments}:
        report.images_per_category[category_id] += 1
    if segment_ids is not None:
        _check_areas_and_boxes(segment_ids, record.segments_info, png_path, problem)


def _check_areas_and_boxes(
    segment_ids: np.ndarray,
    segments_info: list[dict[str, Any]],
    png_path: Path,
    problem: Callable[[str | Path, str], None],
) -> None:
    """``area`` = pixel count and ``bbox`` = ``[x, y, w, h]`` of each listed segment."""
    unique, inverse, counts = np.unique(segment_ids, return_inverse=True, return_counts=True)
    slices = ndimage.find_objects(inverse.reshape(segment_ids.shape) + 1)
    row_of = {int(value): row for row, value in enumerate(unique)}
    for record in segments_info:
        segment_id = segment_id_of(record)
        if segment_id is None:
            continue  # reported as malformed by find_segment_problems
        row = row_of.get(segment_id)
        if row is None or segment_id == 0:
            continue
        area = int(counts[row])
        if "area" in record and not _close(record["area"], area):
            problem(png_path, f"segment {segment_id}: area {record['area']} in the JSON, "
                              f"{area} pixels in the PNG")
        rows, cols = slices[row]
        box = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
        given = record.get("bbox")
        if given is not None and (
            not isinstance(given, list | tuple) or len(given) != 4
            or not all(_close(a, b) for a, b in zip(given, box, strict=True))
        ):
            problem(png_path, f"segment {segment_id}: bbox {given} in the JSON, {box} in the PNG")


def _close(given: Any, actual: int) -> bool:
    try:
        return abs(float(given) - actual) < 1e-3
    except (TypeError, ValueError):
        return False
