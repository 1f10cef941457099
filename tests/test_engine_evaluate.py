"""In-memory PQ of training equals writing the predictions out and running ``pq_compute``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset
from cmt_deeplab.data.panoptic_png import write_panoptic_png
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.data.transforms import resize_crop_pad
from cmt_deeplab.engine.evaluate import evaluate_model
from cmt_deeplab.evaluation import pq_compute
from cmt_deeplab.inference.predictor import Predictor

CANVAS = 49


class OracleModel(nn.Module):
    """Returns, for each known input canvas, mask logits painted from its ground truth."""

    def __init__(self, dataset: CocoPanopticDataset, num_slots: int = 12) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the model a device
        self.known: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        info = dataset.info
        predictor = Predictor(nn.Identity(), info, size=CANVAS, device="cpu")
        for index in range(len(dataset)):
            image, ids, segments = dataset.load_raw(index)
            canvas, valid = predictor.preprocess(image)
            # Ground truth on the canvas grid (nearest), at stride 4.
            resized = resize_crop_pad({"image": torch.zeros(3, *ids.shape),
                                       "panoptic": torch.from_numpy(ids)}, valid,
                                      (CANVAS, CANVAS))["panoptic"][::4, ::4]
            masks = torch.full((num_slots, *resized.shape), -8.0)
            logits = torch.full((num_slots, info.num_classes + 1), -8.0)
            logits[:, -1] = 8.0  # unused slots: void
            # Keep one segment in two as a true positive; the rest get a wrong class (FP + FN).
            for slot, segment in enumerate(segments[:num_slots]):
                masks[slot][resized == segment.id] = 8.0
                label = segment.label if slot % 2 == 0 else (segment.label + 1) % info.num_classes
                logits[slot] = -8.0
                logits[slot, label] = 8.0
            self.known.append((canvas, logits, masks))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, masks = [], []
        for image in images:
            match = next(i for i, (c, _, _) in enumerate(self.known) if torch.equal(c, image))
            logits.append(self.known[match][1])
            masks.append(self.known[match][2])
        return {"pred_logits": torch.stack(logits), "pred_masks": torch.stack(masks)}


def test_in_memory_pq_equals_pq_compute_on_written_files(tmp_path):
    paths = generate_synthetic_dataset(tmp_path / "data", "val", num_images=5, size=48, seed=7)
    dataset = CocoPanopticDataset(*paths)
    model = OracleModel(dataset)
    in_memory = evaluate_model(model, dataset, CANVAS, "cpu", batch_size=2)
    assert in_memory["num_images"] == 5

    predictor = Predictor(model, dataset.info, size=CANVAS, device="cpu", batch_size=2)
    annotations = []
    (tmp_path / "pred").mkdir()
    for index, record in enumerate(dataset.records):
        image, _, _ = dataset.load_raw(index)
        result = predictor(image)
        write_panoptic_png(tmp_path / "pred" / record.png_file, result.panoptic)
        annotations.append(result.to_coco(record.image_id, record.png_file))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": annotations}))
    on_files = pq_compute(paths.annotations_json, tmp_path / "pred.json", paths.panoptic_dir,
                          tmp_path / "pred", num_workers=0)

    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq", "n"):
            assert in_memory[group][key] == pytest.approx(on_files[group][key], abs=1e-12)
    # The oracle keeps half of the segments right: a PQ well inside (0, 1).
    assert 0.2 < in_memory["All"]["pq"] < 0.9
    tp = sum(c["tp"] for c in in_memory["per_class"].values())
    fp = sum(c["fp"] for c in in_memory["per_class"].values())
    assert tp > 0 and fp > 0


def test_max_images_and_restored_mode(tmp_path):
    paths = generate_synthetic_dataset(tmp_path / "data", "val", num_images=4, size=48, seed=8)
    dataset = CocoPanopticDataset(*paths)
    model = OracleModel(dataset)
    model.train()
    result = evaluate_model(model, dataset, CANVAS, max_images=3, batch_size=4)
    assert result["num_images"] == 3
    assert not model.training  # the caller restores training mode
    assert np.isfinite(result["miou"])
