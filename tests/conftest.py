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


@pytest.fixture(scope="session")
def cmt_onnx(tmp_path_factory: pytest.TempPathFactory):
    """``(model, checkpoint dir, ONNX file)``: cmt-deeplab-tiny at test width with confident
    predictions, saved, and exported by ``cmt-deeplab export`` at 65x65 (batch 1).

    Skipped without the ``[export]`` extra. One export (~10 s) for every test that needs one.
    """
    from _export_helpers import EXPORT_SIZE, confident_model, require_onnxruntime, save_checkpoint
    from cmt_deeplab.cli import main as cli_main

    require_onnxruntime()
    root = tmp_path_factory.mktemp("cmt_onnx")
    model = confident_model("cmt-deeplab-tiny")
    checkpoint = save_checkpoint(model, root / "ckpt", EXPORT_SIZE)
    out = root / "cmt.onnx"
    assert cli_main.main(["export", "--checkpoint", str(checkpoint), "--format", "onnx",
                          "--out", str(out)]) == 0
    return model, checkpoint, out
