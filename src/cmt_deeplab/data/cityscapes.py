"""Cityscapes panoptic, as exported by cityscapesscripts' ``createPanopticImgs``.

Layout::

    ROOT/leftImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_leftImg8bit.png
    ROOT/gtFine/cityscapes_panoptic_SPLIT.json      (COCO panoptic format)
    ROOT/gtFine/cityscapes_panoptic_SPLIT/CITY_SEQ_FRAME_gtFine_panoptic.png

Image ids are ``CITY_SEQ_FRAME``; the image of an id is
``leftImg8bit/SPLIT/CITY/{id}_leftImg8bit.png`` (the export's ``images[].file_name`` reads
``..._gtFine_leftImg8bit.png`` and is corrected). That is the only difference from the COCO
reader. 19 evaluated classes (8 things), label divisor 1000.
The export with ``--use-train-id`` is read with ``train_id=True``.
"""

from __future__ import annotations

from pathlib import Path

from cmt_deeplab.data.coco_panoptic import (
    CocoPanopticDataset,
    ImageRecord,
    SplitPaths,
    Transform,
)

CITYSCAPES_LABEL_DIVISOR = 1000


def resolve_cityscapes_split(root: str | Path, split: str, train_id: bool = False) -> SplitPaths:
    """Paths of a Cityscapes panoptic split; errors name what is missing."""
    root = Path(root)
    stem = f"cityscapes_panoptic_{split}" + ("_trainId" if train_id else "")
    paths = SplitPaths(
        root / "leftImg8bit" / split, root / "gtFine" / f"{stem}.json", root / "gtFine" / stem
    )
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"Cityscapes split {split!r} not found under {root}: missing {', '.join(missing)} "
            "(create the panoptic export with cityscapesscripts' createPanopticImgs)"
        )
    return paths


def is_cityscapes_root(root: str | Path, split: str) -> bool:
    return (Path(root) / "gtFine" / f"cityscapes_panoptic_{split}.json").is_file()


class CityscapesPanopticDataset(CocoPanopticDataset):
    """Cityscapes panoptic split ``split`` under ``root`` (see the module notes)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Transform | None = None,
        label_divisor: int = CITYSCAPES_LABEL_DIVISOR,
        skip_bad: bool = False,
        seed: int | None = None,
        train_id: bool = False,
    ) -> None:
        paths = resolve_cityscapes_split(root, split, train_id=train_id)
        super().__init__(
            *paths, transform=transform, label_divisor=label_divisor, skip_bad=skip_bad,
            seed=seed, name="cityscapes",
        )
        for record in self.records:
            # cityscapesscripts derives images[].file_name from the label file name, giving
            # CITY_..._gtFine_leftImg8bit.png, a name no image has: use the real one.
            if record.image_file is None or record.image_file.endswith("_gtFine_leftImg8bit.png"):
                record.image_file = f"{record.image_id}_leftImg8bit.png"

    def image_path(self, record: ImageRecord) -> Path:
        """``leftImg8bit/SPLIT/CITY/FILE``, or ``leftImg8bit/SPLIT/FILE`` if FILE has a folder."""
        assert record.image_file is not None
        if "/" in record.image_file:
            return self.images_dir / record.image_file
        city = str(record.image_id).split("_", 1)[0]
        return self.images_dir / city / record.image_file
