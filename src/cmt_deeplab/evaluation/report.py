"""Human-readable PQ summary and per-class CSV of an ``evaluate_panoptic`` result."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.utils.io import atomic_write_text

CSV_COLUMNS = ["category_id", "name", "isthing", "pq", "sq", "rq", "tp", "fp", "fn", "iou"]


def format_pq_table(result: Mapping[str, Any]) -> str:
    """All / Things / Stuff rows of PQ, SQ, RQ (in %) and class counts, then mIoU if present."""
    lines = [f"{'':8s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}", "-" * 36]
    for group in ("All", "Things", "Stuff"):
        row = result[group]
        lines.append(
            f"{group:8s}| {100 * row['pq']:6.2f} {100 * row['sq']:6.2f} {100 * row['rq']:6.2f} "
            f"{row['n']:5d}"
        )
    if "miou" in result:
        lines.append(f"mIoU: {100 * result['miou']:.2f}")
    return "\n".join(lines)


def _category_rows(categories: Any) -> list[tuple[int, str, bool]]:
    if isinstance(categories, DatasetInfo):
        return [(c.id, c.name, c.isthing) for c in categories.categories]
    if isinstance(categories, Mapping):
        categories = list(categories.values())
    return [(int(c["id"]), str(c.get("name", c["id"])), bool(c.get("isthing", 0)))
            for c in categories]


def write_per_class_csv(path: str | Path, result: Mapping[str, Any], categories: Any) -> None:
    """Writes one row per category (``CSV_COLUMNS``; metrics as fractions), atomically.

    ``categories`` is a ``DatasetInfo``, a COCO category list or ``{id: category}``; rows
    follow its order. Metrics absent from ``result`` (e.g. IoU from ``pq_compute``) stay empty.
    """
    per_class = result["per_class"]
    per_class_iou = result.get("per_class_iou", {})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for category_id, name, isthing in _category_rows(categories):
        if category_id not in per_class:
            raise KeyError(f"category id {category_id} is not in the evaluation result")
        row = per_class[category_id]
        iou = per_class_iou.get(category_id)
        writer.writerow([
            category_id, name, int(isthing),
            *(f"{row[key]:.6f}" for key in ("pq", "sq", "rq")),
            *(row.get(key, "") for key in ("tp", "fp", "fn")),
            "" if iou is None else f"{iou:.6f}",
        ])
    atomic_write_text(path, buffer.getvalue())
