"""COCO panoptic PNG encoding: segment id = R + 256 G + 256^2 B (0 = void)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from cmt_deeplab.utils.io import atomic_write_bytes


def rgb2id(color: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 colours -> ``[H, W]`` int64 segment ids."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] colour array, got shape {color.shape}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """``[H, W]`` segment ids -> ``[H, W, 3]`` uint8 colours."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError("segment ids must lie in [0, 256^3)")
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // (256 * 256)
    return rgb


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Reads a panoptic PNG into ``[H, W]`` int64 ids; errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            array = np.asarray(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"panoptic PNG not found: {path}") from None
    except OSError as error:
        raise ValueError(f"cannot read panoptic PNG {path}: {error}") from None
    return rgb2id(array)


def write_panoptic_png(path: str | Path, ids: np.ndarray) -> None:
    """Writes ``[H, W]`` segment ids as a COCO panoptic PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(id2rgb(ids)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
