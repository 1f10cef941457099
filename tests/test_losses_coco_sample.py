"""The losses on the two real COCO panoptic samples (skipped when the data is absent)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.panoptic_png import read_panoptic_png
from cmt_deeplab.losses import HungarianMatcher, LossConfig, PanopticCriterion, build_targets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"


def _load():
    if not (DATA / "panoptic_examples.json").is_file():
        pytest.skip(f"COCO panoptic sample not found at {DATA}")
    info = DatasetInfo.from_json(DATA / "panoptic_coco_categories.json")
    annotations = json.loads((DATA / "panoptic_examples.json").read_text())["annotations"]
    samples = []
    for record in annotations:
        ids = read_panoptic_png(DATA / "panoptic_examples" / record["file_name"])
        masks, labels, is_thing = [], [], []
        void = ids == 0
        semantic = np.full(ids.shape, -1, dtype=np.int64)
        for segment in record["segments_info"]:
            region = ids == segment["id"]
            cls = info.contiguous_id(segment["category_id"])
            semantic[region] = cls  # crowd keeps its class
            if segment["iscrowd"]:
                void |= region
                continue
            masks.append(region)
            labels.append(cls)
            is_thing.append(info.is_thing(cls))
        samples.append(
            {
                "masks": torch.from_numpy(np.stack(masks)),
                "labels": torch.tensor(labels),
                "is_thing": torch.tensor(is_thing),
                "void": torch.from_numpy(void),
                "semantic": torch.from_numpy(semantic),
                "image_id": record["image_id"],
                "ids": ids,
                "segments": record["segments_info"],
            }
        )
    return info, samples


def test_targets_match_the_png():
    _, samples = _load()
    for sample in samples:
        targets = build_targets([sample], stride=4)
        small = sample["ids"][::4, ::4]
        assert targets.mask_size == small.shape  # ceil(H / 4) x ceil(W / 4)
        kept = [s for s in sample["segments"] if not s["iscrowd"] and (small == s["id"]).any()]
        assert int(targets.gt_valid.sum()) == len(kept)
        assert sorted(targets.gt_area[0][targets.gt_valid[0]].tolist()) == sorted(
            float((small == s["id"]).sum()) for s in kept
        )
        crowd = [s["id"] for s in sample["segments"] if s["iscrowd"]]
        non_void = (small != 0) & ~np.isin(small, crowd)
        assert np.array_equal(targets.pixel_valid[0].numpy(), non_void)


def test_criterion_on_real_ground_truth():
    info, samples = _load()
    num_slots = 128
    gen = torch.Generator().manual_seed(0)
    # Pad both images to one crop, as the data pipeline does (void padding, semantic -1).
    crop = (max(s["void"].shape[0] for s in samples), max(s["void"].shape[1] for s in samples))
    for sample in samples:
        pad = (0, crop[1] - sample["void"].shape[1], 0, crop[0] - sample["void"].shape[0])
        sample["masks"] = F.pad(sample["masks"], pad)
        sample["void"] = F.pad(sample["void"], pad, value=True)
        sample["semantic"] = F.pad(sample["semantic"], pad, value=-1)
    targets = build_targets(samples, stride=4)
    batch, num_gt, h, w = targets.gt_masks.shape
    k = info.num_classes

    # A perfect prediction with GT mask g in slot 2g + 1.
    pred_masks = torch.randn(batch, num_slots, h, w, generator=gen)
    pred_logits = torch.zeros(batch, num_slots, k + 1)
    pred_logits[..., k] = 30.0
    for b in range(batch):
        for g in range(num_gt):
            if targets.gt_valid[b, g]:
                pred_masks[b, 2 * g + 1][targets.gt_masks[b, g]] = 40.0
                pred_logits[b, 2 * g + 1] = 30.0 * F.one_hot(targets.gt_labels[b, g], k + 1)
    feature = F.normalize(torch.randn(batch, 128, h, w, generator=gen), dim=1)
    perfect = {"pred_logits": pred_logits, "pred_masks": pred_masks, "pixel_feature": feature}
    matches = HungarianMatcher()(perfect, targets)
    for b, (slots, gts) in enumerate(matches):
        assert len(gts) == int(targets.gt_valid[b].sum())
        assert slots.tolist() == (2 * gts + 1).tolist()

    criterion = PanopticCriterion(k, LossConfig(semantic_weight=0.0), gen)
    good = criterion(perfect, samples)
    random = {
        "pred_logits": torch.randn(batch, num_slots, k + 1, generator=gen),
        "pred_masks": torch.randn(batch, num_slots, h, w, generator=gen),
        "pixel_feature": feature,
    }
    bad = criterion(random, samples)
    assert all(torch.isfinite(v) for v in bad.values())
    for term in ("loss_pq_class", "loss_pq_dice", "loss_mask_id"):
        assert good[term].item() < 1e-3, term
        assert bad[term].item() > 100 * good[term].item() + 1e-3, term
