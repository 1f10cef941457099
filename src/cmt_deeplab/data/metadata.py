"""Category metadata shared by datasets, losses, post-processing and evaluation.

The model predicts *contiguous* class indices ``0..K-1`` with all thing classes first
(``0..num_thing_classes-1``) and stuff after them, as deeplab2 orders them; index ``K``
(the last channel of ``pred_logits``) is void. ``DatasetInfo`` maps these indices to and
from the dataset's own category ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Ignore value of semantic label maps (crowd regions keep their class; unlabeled is void).
IGNORE_LABEL = -1


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] = (0, 0, 0)


@dataclass
class DatasetInfo:
    """Categories in contiguous order (things first) and the panoptic label divisor."""

    categories: list[Category]
    label_divisor: int = 256
    name: str = "custom"
    _by_id: dict[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        things = [c for c in self.categories if c.isthing]
        stuff = [c for c in self.categories if not c.isthing]
        self.categories = things + stuff
        self._by_id = {c.id: i for i, c in enumerate(self.categories)}
        if len(self._by_id) != len(self.categories):
            ids = [c.id for c in self.categories]
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"duplicate category ids: {duplicates}")

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def num_thing_classes(self) -> int:
        return sum(c.isthing for c in self.categories)

    def contiguous_id(self, category_id: int) -> int:
        """Contiguous index of a dataset category id; ``KeyError`` naming the id if unknown."""
        try:
            return self._by_id[int(category_id)]
        except KeyError:
            raise KeyError(f"unknown category id {category_id}") from None

    def category_id(self, contiguous_id: int) -> int:
        return self.categories[int(contiguous_id)].id

    def is_thing(self, contiguous_id: int) -> bool:
        return contiguous_id < self.num_thing_classes

    @classmethod
    def from_coco_categories(
        cls, categories: list[dict[str, Any]], label_divisor: int = 256, name: str = "custom"
    ) -> DatasetInfo:
        cats = []
        if not isinstance(categories, list):
            raise ValueError(f"categories must be a list, got {categories!r}"[:300])
        for c in categories:
            if not isinstance(c, dict):
                raise ValueError(f"malformed category record {c!r}: not a mapping"[:300])
            try:
                color = tuple(int(v) for v in c.get("color", (0, 0, 0)))
                cats.append(Category(int(c["id"]), str(c["name"]), bool(c["isthing"]), color))
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"malformed category record {c!r}: {error}") from None
        return cls(cats, label_divisor=label_divisor, name=name)

    @classmethod
    def from_json(cls, path: str | Path, label_divisor: int = 256) -> DatasetInfo:
        """Reads ``categories`` from a COCO panoptic JSON (or a bare list of categories)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read categories from {path}: {error}") from None
        categories = data["categories"] if isinstance(data, dict) else data
        return cls.from_coco_categories(categories, label_divisor=label_divisor)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label_divisor": self.label_divisor,
            "categories": [
                {"id": c.id, "name": c.name, "isthing": int(c.isthing), "color": list(c.color)}
                for c in self.categories
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        return cls.from_coco_categories(
            data["categories"], label_divisor=int(data.get("label_divisor", 256)),
            name=str(data.get("name", "custom")),
        )


def coco_panoptic_info() -> DatasetInfo:
    """COCO panoptic: 133 categories (80 things first), label divisor 256."""
    from cmt_deeplab.data.coco_categories import COCO_PANOPTIC_CATEGORIES

    categories = [Category(i, n, bool(t), tuple(c)) for i, n, t, c in COCO_PANOPTIC_CATEGORIES]
    return DatasetInfo(categories, label_divisor=256, name="coco")
