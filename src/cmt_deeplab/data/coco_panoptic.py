"""COCO panoptic format reader: images + ``panoptic_*.json`` + panoptic PNGs.

Layout (COCO's own)::

    ROOT/NAME/*.jpg                         images
    ROOT/annotations/panoptic_NAME.json     images, annotations (segments_info), categories
    ROOT/annotations/panoptic_NAME/*.png    segment ids, id = R + 256 G + 256^2 B, 0 = void

Each item is validated when it is loaded (file readable, image and PNG sizes equal, every PNG id
listed in ``segments_info`` and the reverse, categories known, no duplicate segment ids); a bad
item raises an error naming the file and image id, or with ``skip_bad=True`` is skipped with a
warning and listed in ``dataset.skipped``: never a silently wrong label.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import Dataset

from cmt_deeplab.data.image_io import load_image
from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.panoptic_png import read_panoptic_png
from cmt_deeplab.data.sample import Segment, build_sample
from cmt_deeplab.utils.io import read_json

#: ``transform(sample, rng) -> sample``; ``rng`` is the item's ``numpy.random.Generator``.
Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


class SplitPaths(NamedTuple):
    images_dir: Path
    annotations_json: Path
    panoptic_dir: Path


class DataError(ValueError):
    """A bad dataset item; ``path`` is the offending file."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(message)
        self.path = str(path)


@dataclass
class ImageRecord:
    """One annotated image of the JSON (paths relative to the dataset's directories)."""

    image_id: int | str
    image_file: str | None  # None when the JSON has no ``images`` record for this id
    png_file: str
    segments_info: list[dict[str, Any]]
    height: int | None = None
    width: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_split(root: str | Path, split: str) -> SplitPaths:
    """Paths of split ``split`` in COCO's layout under ``root``; errors name what is missing."""
    root = Path(root)
    paths = SplitPaths(
        root / split,
        root / "annotations" / f"panoptic_{split}.json",
        root / "annotations" / f"panoptic_{split}",
    )
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise FileNotFoundError(
            f"split {split!r} not found under {root}: missing {', '.join(missing)} (expected "
            f"ROOT/{split}/, ROOT/annotations/panoptic_{split}.json and "
            f"ROOT/annotations/panoptic_{split}/)"
        )
    return paths


def load_panoptic_json(path: str | Path) -> dict[str, Any]:
    """Reads a COCO panoptic JSON, checking the keys the reader needs."""
    path = Path(path)
    data = read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or malformed {key!r} list")
    if not isinstance(data.get("images", []), list):
        raise ValueError(f"{path}: malformed 'images' list")
    return data


def parse_records(data: dict[str, Any], json_path: str | Path) -> list[ImageRecord]:
    """One ``ImageRecord`` per annotation, joined with its ``images`` entry by image id.

    Raises:
        ValueError: a record that is not a mapping, lacks a key, or holds a value of the wrong
            type (ids: integers or strings; file names: strings; sizes: positive integers),
            naming the file, the record and the value.
    """
    images = {}
    for position, image in enumerate(data.get("images", [])):
        where = f"{json_path}: images[{position}]"
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"{where}: malformed image record {_short(image)} "
                             "(needs 'id' and 'file_name')")
        _check_type(image, "id", _is_id, "an integer or a string", where)
        _check_type(image, "file_name", _is_name, "a non-empty string", where)
        for key in ("height", "width"):
            if image.get(key) is not None:
                _check_type(image, key, _is_positive_int, "a positive integer", where)
        images[image["id"]] = image
    records = []
    for position, annotation in enumerate(data["annotations"]):
        where = f"{json_path}: annotations[{position}]"
        if not isinstance(annotation, dict) or not {"image_id", "file_name"} <= annotation.keys():
            raise ValueError(f"{where}: malformed annotation record {_short(annotation)} "
                             "(needs 'image_id' and 'file_name')")
        _check_type(annotation, "image_id", _is_id, "an integer or a string", where)
        _check_type(annotation, "file_name", _is_name, "a non-empty string", where)
        segments = annotation.get("segments_info", [])
        if not isinstance(segments, list):
            raise ValueError(f"{where} (image id {annotation['image_id']}): segments_info is "
                             f"not a list: {_short(segments)}")
        image = images.get(annotation["image_id"], {})
        records.append(
            ImageRecord(
                image_id=annotation["image_id"],
                image_file=image.get("file_name"),
                png_file=annotation["file_name"],
                segments_info=segments,
                height=image.get("height"),
                width=image.get("width"),
            )
        )
    return records


def find_id_problems(data: dict[str, Any], records: list[ImageRecord]) -> list[str]:
    """Image ids that the JSON's ``images`` or ``annotations`` list more than once."""
    problems = []
    image_ids = Counter(image["id"] for image in data.get("images", []))
    for image_id, count in image_ids.items():
        if count > 1:
            problems.append(f"image id {image_id!r} has {count} image records")
    annotated = Counter(record.image_id for record in records)
    for image_id, count in annotated.items():
        if count > 1:
            problems.append(f"image id {image_id!r} has {count} annotations")
    return problems


def _is_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(record: dict[str, Any], key: str, test: Callable[[Any], bool], kind: str,
                where: str) -> None:
    if not test(record[key]):
        raise ValueError(f"{where}: {key!r} must be {kind}, got {_short(record[key])}")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def segment_id_of(record: Any) -> int | None:
    """The ``id`` of a ``segments_info`` entry, or ``None`` when it is not an integer."""
    value = record.get("id") if isinstance(record, dict) else None
    return value if _is_int(value) else None


def find_segment_problems(
    png_ids: Iterable[int], segments_info: list[dict[str, Any]], info: DatasetInfo
) -> tuple[list[Segment], list[str]]:
    """Checks ``segments_info`` against the ids present in a PNG (0 = void, not listed).

    Returns the resolved segments and a list of problems (empty when the record is sound).
    """
    problems: list[str] = []
    segments: list[Segment] = []
    seen: dict[int, int] = {}
    for position, record in enumerate(segments_info):
        reason = _segment_record_problem(record)
        if reason:
            problems.append(f"malformed segments_info entry #{position}: {reason}: "
                            f"{_short(record)}")
            continue
        segment_id = record["id"]
        category_id = record["category_id"]
        iscrowd = bool(record.get("iscrowd", 0))
        seen[segment_id] = seen.get(segment_id, 0) + 1
        if seen[segment_id] > 1:
            continue
        if segment_id == 0:
            problems.append("segments_info lists segment id 0, which is reserved for void")
            continue
        try:
            label = info.contiguous_id(category_id)
        except KeyError:
            problems.append(f"unknown category id {category_id} (segment {segment_id})")
            continue
        isthing = info.is_thing(label)
        segments.append(Segment(segment_id, category_id, label, isthing, iscrowd))
    duplicates = sorted(i for i, count in seen.items() if count > 1)
    if duplicates:
        problems.append(f"overlapping segments: segment ids {duplicates} listed more than once")
    present = {int(i) for i in png_ids} - {0}
    listed = set(seen)
    if present - listed:
        problems.append(
            f"segment ids {sorted(present - listed)[:10]} in the PNG are missing from segments_info"
        )
    if listed - present - {0}:
        problems.append(
            f"segments_info ids {sorted(listed - present - {0})[:10]} do not appear in the PNG"
        )
    return segments, problems


def _segment_record_problem(record: Any) -> str | None:
    """Why a ``segments_info`` entry is malformed, or ``None``."""
    if not isinstance(record, dict):
        return "not a mapping"
    for key in ("id", "category_id"):
        if key not in record:
            return f"no {key!r}"
        if not _is_int(record[key]):
            return f"{key!r} must be an integer, got {_short(record[key])}"
    if record.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
        return f"'iscrowd' must be 0 or 1, got {_short(record['iscrowd'])}"
    return None


class CocoPanopticDataset(Dataset):
    """COCO-format panoptic dataset returning the sample contract (see ``data.sample``).

    Args:
        images_dir: folder of the images named by the JSON's ``images[].file_name``.
        annotations_json: the panoptic JSON (``images``, ``annotations``, ``categories``).
        panoptic_dir: folder of the PNGs named by ``annotations[].file_name``.
        transform: ``transform(sample, rng) -> sample``, e.g. ``TrainTransform``.
        label_divisor: ``panoptic = category_id * label_divisor + instance``.
        skip_bad: skip bad items with a warning (listed in ``skipped``) instead of raising.
        seed: with a seed, item ``i`` of epoch ``e`` is augmented with
            ``np.random.default_rng([seed, e, i])`` whatever the worker (call ``set_epoch``);
            without one, each load draws fresh entropy.
        name: ``info.name``; defaults to the JSON's file stem.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotations_json: str | Path,
        panoptic_dir: str | Path,
        transform: Transform | None = None,
        label_divisor: int = 256,
        skip_bad: bool = False,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotations_json = Path(annotations_json)
        self.panoptic_dir = Path(panoptic_dir)
        for path, what in ((self.images_dir, "images"), (self.panoptic_dir, "panoptic PNG")):
            if not path.is_dir():
                raise FileNotFoundError(f"{what} directory not found: {path}")
        data = load_panoptic_json(self.annotations_json)
        try:
            self.info = DatasetInfo.from_coco_categories(
                data["categories"], label_divisor=label_divisor,
                name=name or self.annotations_json.stem,
            )
        except ValueError as error:
            raise ValueError(f"{self.annotations_json}: {error}") from None
        self.records = parse_records(data, self.annotations_json)
        self.id_problems = find_id_problems(data, self.records)
        self.transform = transform
        self.skip_bad = skip_bad
        self.seed = seed
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[int] = set()

    def require_unique_ids(self) -> None:
        """Raises a ``ValueError`` listing ``id_problems``: a repeated image id pairs an
        annotation with another image's file, so scores or labels would silently be wrong."""
        if self.id_problems:
            listing = "; ".join(self.id_problems[:10])
            more = f"; ... and {len(self.id_problems) - 10} more" if len(self.id_problems) > 10 else ""
            raise ValueError(f"{self.annotations_json}: {listing}{more} (see `cmt-deeplab data "
                             "check`)")

    # -- paths ---------------------------------------------------------------------------
    def image_path(self, record: ImageRecord) -> Path:
        assert record.image_file is not None
        return self.images_dir / record.image_file

    def png_path(self, record: ImageRecord) -> Path:
        return self.panoptic_dir / record.png_file

    # -- loading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Selects the augmentation stream of ``epoch`` when the dataset has a seed."""
        self.epoch = int(epoch)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray, list[Segment]]:
        """Validated ``(image [H, W, 3] uint8, segment ids [H, W] int64, segments)``.

        Raises ``FileNotFoundError`` or ``DataError`` (a ``ValueError``) naming the file and id.
        """
        record = self.records[index]
        png_path = self.png_path(record)
        where = f"image id {record.image_id}"
        if record.image_file is None:
            raise DataError(png_path, f"{png_path} ({where}): no 'images' record in the JSON")
        image_path = self.image_path(record)
        try:
            image = load_image(image_path)
        except FileNotFoundError:
            raise _missing(image_path, f"image not found: {image_path} ({where})") from None
        except ValueError as error:
            raise DataError(image_path, f"{error} ({where})") from None
        try:
            segment_ids = read_panoptic_png(png_path)
        except FileNotFoundError:
            raise _missing(png_path, f"panoptic PNG not found: {png_path} ({where})") from None
        except ValueError as error:
            raise DataError(png_path, f"{error} ({where})") from None
        if image.shape[:2] != segment_ids.shape:
            raise DataError(
                png_path,
                f"{png_path} ({where}): size mismatch, image {image_path.name} is "
                f"{image.shape[0]}x{image.shape[1]} but the PNG is "
                f"{segment_ids.shape[0]}x{segment_ids.shape[1]} (HxW)",
            )
        segments, problems = find_segment_problems(
            np.unique(segment_ids), record.segments_info, self.info
        )
        if problems:
            raise DataError(png_path, f"{png_path} ({where}): " + "; ".join(problems))
        return image, segment_ids, segments

    def load_sample(self, index: int) -> dict[str, Any]:
        """The untransformed sample of item ``index`` (validated, raises on a bad item)."""
        record = self.records[index]
        image, segment_ids, segments = self.load_raw(index)
        file_name = record.image_file or record.png_file
        try:
            return build_sample(
                image, segment_ids, segments, self.info, record.image_id, file_name
            )
        except ValueError as error:
            raise DataError(self.png_path(record), f"{error} (image id {record.image_id})") from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._bad:
                continue
            try:
                sample = self.load_sample(candidate)
            except (DataError, FileNotFoundError) as error:
                if not self.skip_bad:
                    raise
                self._skip(candidate, error)
                continue
            if self.transform is not None:
                sample = self.transform(sample, self._item_rng(index))
            return sample
        raise ValueError(f"{self.annotations_json}: every item is bad, nothing to load")

    def validate_all(self) -> list[tuple[str, str]]:
        """Loads every item once; returns ``(file, reason)`` for each bad one.

        With ``skip_bad`` the bad items are removed from the dataset (``len`` shrinks) and
        listed in ``skipped``; without it a ``ValueError`` lists them.
        """
        problems = []
        for index in range(len(self)):
            try:
                self.load_sample(index)
            except (DataError, FileNotFoundError) as error:
                problems.append((_error_file(error), str(error)))
                if self.skip_bad:
                    self._skip(index, error)
        if problems and not self.skip_bad:
            listing = "\n".join(f"  {reason}" for _, reason in problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise ValueError(f"{len(problems)} bad item(s) in {self.annotations_json}:\n"
                             f"{listing}{more}")
        if self._bad:
            self.records = [r for i, r in enumerate(self.records) if i not in self._bad]
            self._bad = set()
        return problems

    def _skip(self, index: int, error: Exception) -> None:
        self._bad.add(index)
        entry = (_error_file(error), str(error))
        if entry not in self.skipped:
            self.skipped.append(entry)
            warnings.warn(f"skipping bad item: {error}", stacklevel=3)

    def _item_rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, index])


def _missing(path: Path, message: str) -> FileNotFoundError:
    error = FileNotFoundError(message)
    error.path = str(path)  # as DataError.path (``filename`` would change the message)
    return error


def _error_file(error: Exception) -> str:
    return str(getattr(error, "path", ""))
