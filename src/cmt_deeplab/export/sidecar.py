"""The JSON that travels with an exported graph (``FILE.json`` beside ``FILE``).

It holds what a runtime needs besides the graph: the model (name, build arguments), the
categories (``DatasetInfo.to_dict()``), the input normalisation and padding, the input and
output names, and the shapes the graph accepts. ``check_input_shape`` turns a shape the
graph was not exported for into an error that names both, before the runtime sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.utils.io import atomic_write_json, read_json

SIDECAR_VERSION = 1
#: ``pixel * scale + offset``: the models' input range [-1, 1] (``normalize_images``).
NORMALIZATION = {"scale": 1 / 127.5, "offset": -1.0, "formula": "pixel / 127.5 - 1",
                 "layout": "NCHW", "channels": "RGB", "dtype": "float32", "padding_value": 0.0}
#: A dynamic height or width is ``SIZE_STEP * k + 1``: every stride stays corner-aligned.
SIZE_STEP = 32


#: The sidecar key holding the SHA-256 (hex) of the exported graph file, checked at load.
MODEL_DIGEST_KEY = "model_sha256"


def sidecar_path(model_file: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    model_file = Path(model_file)
    return model_file.with_name(model_file.name + ".json")


@dataclass
class AxisRange:
    """The values one input axis accepts: ``minimum <= v <= maximum`` with
    ``(v - offset) % step == 0``; ``maximum`` ``None`` is unbounded."""

    minimum: int
    maximum: int | None
    step: int = 1
    offset: int = 0

    @classmethod
    def fixed(cls, value: int) -> AxisRange:
        return cls(value, value)

    def accepts(self, value: int) -> bool:
        return (value >= self.minimum and (self.maximum is None or value <= self.maximum)
                and (value - self.offset) % self.step == 0)

    def describe(self) -> str:
        if self.maximum == self.minimum:
            return str(self.minimum)
        rule = f"{self.step}k+{self.offset} " if self.step > 1 else ""
        top = "" if self.maximum is None else f"..{self.maximum}"
        return f"{rule}{self.minimum}{top}" if top else f"{rule}>= {self.minimum}"

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.minimum, "max": self.maximum, "step": self.step, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AxisRange:
        return cls(int(data["min"]), None if data["max"] is None else int(data["max"]),
                   int(data.get("step", 1)), int(data.get("offset", 0)))


@dataclass
class Sidecar:
    """The contents of an exported graph's sidecar JSON."""

    format: str
    model: dict[str, Any]
    info: DatasetInfo
    size: tuple[int, int]  # the size the graph was traced at: the default canvas
    batch: AxisRange
    height: AxisRange
    width: AxisRange
    input_name: str
    output_names: list[str]
    post_processing: dict[str, Any] | None
    extra: dict[str, Any]

    def check_input_shape(self, shape: tuple[int, ...], any_batch: bool = False) -> None:
        """Raises ``ValueError`` naming ``shape`` and the accepted ones unless it fits
        (``any_batch``: the caller splits the batch into the graph's own)."""
        shape = tuple(int(s) for s in shape)
        ok = (len(shape) == 4 and shape[1] == 3 and shape[0] >= 1
              and (any_batch or self.batch.accepts(shape[0]))
              and self.height.accepts(shape[2]) and self.width.accepts(shape[3]))
        if not ok:
            raise ValueError(
                f"input shape {list(shape)} does not fit the exported graph, which accepts "
                f"{self.describe_shapes()}; export again with --size HxW (or --dynamic-size "
                "/ --dynamic-batch)")

    def describe_shapes(self) -> str:
        return (f"[B, 3, H, W] with B {self.batch.describe()}, H {self.height.describe()}, "
                f"W {self.width.describe()}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SIDECAR_VERSION,
            "format": self.format,
            "model": self.model,
            "data": self.info.to_dict(),
            "input": {"name": self.input_name, "normalization": NORMALIZATION,
                      "size": list(self.size),
                      "shapes": {"batch": self.batch.to_dict(), "height": self.height.to_dict(),
                                 "width": self.width.to_dict()},
                      "accepts": self.describe_shapes()},
            "outputs": self.output_names,
            "post_processing": self.post_processing,
            **self.extra,
        }

    def save(self, model_file: str | Path) -> Path:
        path = sidecar_path(model_file)
        atomic_write_json(path, self.to_dict(), indent=1)
        return path

    @classmethod
    def load(cls, model_file: str | Path) -> Sidecar:
        """The sidecar of ``model_file``; errors name the JSON file."""
        path = sidecar_path(model_file)
        data = read_json(path, "sidecar JSON of the exported model")
        try:
            if data.get("version") != SIDECAR_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {SIDECAR_VERSION}")
            normalization = data["input"]["normalization"]
            if (normalization["scale"], normalization["offset"]) != (
                    NORMALIZATION["scale"], NORMALIZATION["offset"]):
                raise ValueError(f"unsupported input normalisation {normalization}")
            shapes = data["input"]["shapes"]
            known = {"version", "format", "model", "data", "input", "outputs", "post_processing"}
            return cls(
                format=data["format"], model=data["model"],
                info=DatasetInfo.from_dict(data["data"]),
                size=tuple(data["input"]["size"]),
                batch=AxisRange.from_dict(shapes["batch"]),
                height=AxisRange.from_dict(shapes["height"]),
                width=AxisRange.from_dict(shapes["width"]),
                input_name=data["input"]["name"], output_names=list(data["outputs"]),
                post_processing=data["post_processing"],
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{path}: not a valid export sidecar ({error})") from None
