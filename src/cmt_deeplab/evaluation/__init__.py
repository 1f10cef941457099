"""Panoptic quality (equal to panopticapi) and semantic mIoU."""

from cmt_deeplab.evaluation.miou import semantic_miou
from cmt_deeplab.evaluation.panoptic_eval import evaluate_panoptic, pq_compute
from cmt_deeplab.evaluation.panoptic_stats import (
    PanopticStats,
    image_panoptic_stats,
    summarize_pq,
)
from cmt_deeplab.evaluation.report import format_pq_table, write_per_class_csv

__all__ = [
    "PanopticStats",
    "evaluate_panoptic",
    "format_pq_table",
    "image_panoptic_stats",
    "pq_compute",
    "semantic_miou",
    "summarize_pq",
    "write_per_class_csv",
]
