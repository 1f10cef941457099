"""Reading images as ``[H, W, 3]`` uint8 RGB arrays, whatever the file holds.

Conversions (Pillow modes):

- EXIF orientation is applied (``ImageOps.exif_transpose``), so the array is what a viewer shows.
- ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` -> RGB through Pillow.
- ``RGBA``, ``LA``, ``PA`` and palette images with transparency: the alpha channel is **dropped**
  (the colour channels are kept as stored, not composited on a background). Datasets store
  photographs; a transparent pixel still carries the colour the annotator saw.
- 16-bit images (``I;16*``, and ``I`` as Pillow decodes 16-bit PNG/TIFF into it) are scaled
  ``0..65535 -> 0..255`` (``round(v / 257)``) rather than clipped, so a 16-bit photograph keeps
  its contrast. ``F`` (float) images are taken as ``[0, 1]`` when their maximum is at most 1,
  otherwise as ``[0, 255]``.
- A missing file raises ``FileNotFoundError``; a truncated, corrupt or unknown file, and one
  whose header claims more pixels than Pillow's decompression-bomb limit
  (``Image.MAX_IMAGE_PIXELS``, twice which Pillow refuses), raises ``ValueError``; both name
  the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: str | Path) -> np.ndarray:
    """Reads an image file into an ``[H, W, 3]`` uint8 RGB array (see the module notes)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decodes now, so a truncated file fails here, inside the try
            image = ImageOps.exif_transpose(image)
            return _to_rgb_array(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"cannot read image {path}: it is a directory") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # Pillow raises OSError for truncated data, UnidentifiedImageError (an OSError) for
        # unknown formats, and SyntaxError/ValueError from a few broken-header decoders.
        raise ValueError(f"cannot read image {path}: {error}") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image after EXIF orientation, reading the header only (no decode)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation tag
            except (OSError, SyntaxError, ValueError):
                # A PNG may keep EXIF after its pixel data: a cut file loses it, which only a
                # full decode (load_image) reports.
                orientation = 1
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    # Orientations 5-8 rotate by 90 degrees, so exif_transpose swaps width and height.
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        if values.size and np.nanmax(values) <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids Pillow's warning about byte transparency in palettes.
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")  # drops alpha; converts L/1/P/CMYK/YCbCr/LAB/HSV
    array = np.array(image, dtype=np.uint8)  # a writable copy (np.asarray is read-only)
    assert array.ndim == 3 and array.shape[2] == 3, array.shape
    return array
