"""Datasets, augmentation and ground-truth targets.

Reading: ``CocoPanopticDataset`` / ``CityscapesPanopticDataset`` return one sample dict per
image (contract in ``data.sample``); ``TrainTransform`` / ``EvalTransform`` augment it;
``collate_batch`` batches it. ``open_split`` opens a split named by root and name or by its
paths (``SplitSource``), from the command line (``add_data_arguments`` + ``dataset_from_args``)
or the training config; ``random_batch`` stands in for data. ``generate_synthetic_dataset``
writes the synthetic benchmark and ``check_dataset`` verifies a split.

Names are imported lazily (PEP 562), so ``from cmt_deeplab.data.metadata import ...`` stays
cheap and cannot create import cycles.
"""

from __future__ import annotations

from cmt_deeplab.utils.lazy_exports import lazy_exports

_EXPORTS = {
    "add_data_arguments": "arguments",
    "dataset_from_args": "arguments",
    "split_from_args": "arguments",
    "CheckReport": "check",
    "check_dataset": "check",
    "CityscapesPanopticDataset": "cityscapes",
    "resolve_cityscapes_split": "cityscapes",
    "CocoPanopticDataset": "coco_panoptic",
    "DataError": "coco_panoptic",
    "SplitPaths": "coco_panoptic",
    "resolve_split": "coco_panoptic",
    "collate_batch": "collate",
    "load_image": "image_io",
    "IGNORE_LABEL": "metadata",
    "Category": "metadata",
    "DatasetInfo": "metadata",
    "build_sample": "sample",
    "SplitSource": "splits",
    "open_dataset": "splits",
    "open_split": "splits",
    "random_batch": "random_batch",
    "generate_synthetic_dataset": "synthetic",
    "synthetic_dataset_info": "synthetic",
    "EvalTransform": "transforms",
    "TrainTransform": "transforms",
    "resize_crop_pad": "transforms",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
