"""Shared test fixtures and settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores shared by everything: keep torch from oversubscribing them.
torch.set_num_threads(int(os.environ.get("CMT_TEST_THREADS", "2")))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO_SAMPLE = SHARED_DATA / "coco_panoptic_sample"


@pytest.fixture
def coco_sample() -> Path:
    """The two real COCO panoptic samples from ``../shared/data`` (skipped when absent)."""
    if not (COCO_SAMPLE / "panoptic_examples.json").exists():
        pytest.skip(f"COCO panoptic sample not found at {COCO_SAMPLE} (../shared/data is absent)")
    return COCO_SAMPLE
