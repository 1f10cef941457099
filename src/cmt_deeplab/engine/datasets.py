"""The datasets of a training config: the training split, augmented, and the val split."""

from __future__ import annotations

from typing import Any

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.transforms import TrainTransform
from cmt_deeplab.engine.config import TrainConfig


def train_transform(config: TrainConfig) -> TrainTransform:
    """The augmentation of ``config`` (``augmentation`` section, ``input.crop``)."""
    aug = config.augmentation
    return TrainTransform(tuple(config.input.crop), min_scale=aug.min_scale,
                          max_scale=aug.max_scale, scale_step=aug.scale_step,
                          resize_to_crop=aug.resize_to_crop, flip_prob=aug.flip_prob)


def open_datasets(config: TrainConfig) -> tuple[Any, Any, DatasetInfo | None]:
    """``(train dataset or None, val dataset or None, their categories or None)``.

    The training split draws its augmentation from ``run.seed``; a val split must list the
    same categories as the training split.
    """
    data = config.data
    train = (data.open("train", train_transform(config), seed=config.run.seed)
             if data.source("train").given else None)
    val = data.open("val") if data.source("val").given else None
    for dataset in (train, val):
        if dataset is not None:
            dataset.require_unique_ids()
            if len(dataset) == 0:
                raise ValueError(f"{dataset.annotations_json}: the split has no annotated images")
    if train is not None and val is not None:
        ids = [[c.id for c in d.info.categories] for d in (train, val)]
        if ids[0] != ids[1]:
            raise ValueError(f"the train and val splits list different categories "
                             f"(ids {ids[0]} vs {ids[1]}); evaluate on the same label set")
    info = train.info if train is not None else val.info if val is not None else None
    return train, val, info
