"""COCO panoptic PNG encoding: segment id = R + 256 G + 256^2 B (0 = void).

Reading is the main cost of evaluating PQ from files, so it has a fast path: libspng (through
``pyspng``) decodes plain 8-bit PNGs about twice as fast as Pillow. Anything else (16-bit or
low-bit-depth images, animated PNGs, damaged headers, files libspng refuses, or ``pyspng`` not
installed) goes to Pillow, so the ids, and the errors, are the ones Pillow gives.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from cmt_deeplab.utils.io import atomic_write_bytes

try:
    import pyspng as _pyspng
except ImportError:  # optional speed-up: Pillow reads every panoptic PNG as well
    _pyspng = None

#: ``read_panoptic_rgbx`` value -> segment id.
ID_MASK = 0xFFFFFF

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour types libspng decodes to the same RGB as Pillow's ``convert("RGB")`` at
#: 8 bits per sample: grey, RGB, palette, grey + alpha, RGBA (alpha is dropped).
_FAST_COLOR_TYPES = frozenset({0, 2, 3, 4, 6})


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


def _libspng_can_decode(data: bytes) -> bool:
    """Whether the fast path gives Pillow's pixels (or Pillow's error) for these PNG bytes.

    Walks the chunks: an 8-bit image of a colour type in ``_FAST_COLOR_TYPES``, no animation,
    every CRC right, up to ``IEND``. The CRCs matter: pyspng ignores them and the zlib
    checksum, so a damaged ``IDAT`` would decode to wrong ids where Pillow raises. Checking
    them costs microseconds; a file that fails goes to Pillow, which decides as before.
    """
    if not data.startswith(_SIGNATURE):
        return False
    view = memoryview(data)
    position = len(_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            return False
        if zlib.crc32(view[position + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            return False
        if position == len(_SIGNATURE):
            if kind != b"IHDR" or length != 13:
                return False
            width, height = struct.unpack_from(">II", data, position + 8)
            bit_depth, color_type = data[position + 16], data[position + 17]
            if bit_depth != 8 or color_type not in _FAST_COLOR_TYPES:
                return False
            if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                return False  # a decompression bomb: Pillow refuses it by name
        elif kind == b"acTL":  # an APNG: let Pillow pick the frame it shows
            return False
        elif kind == b"IEND":
            return True
        position = end + 4
    return False


def _decode_with_libspng(data: bytes) -> np.ndarray | None:
    """``[H, W]`` uint32 RGBX values, or ``None`` where the fast path does not apply."""
    if _pyspng is None or not _libspng_can_decode(data):
        return None
    try:
        rgba = _pyspng.load(data, "RGBA")  # [H, W, 4] uint8, C-contiguous
    except (RuntimeError, ValueError):  # libspng refuses it; Pillow decides
        return None
    # Four bytes a pixel read as one little-endian word: R + 256 G + 256^2 B + 256^3 A.
    return rgba.view("<u4")[..., 0]


def _decode_with_pillow(data: bytes) -> np.ndarray:
    """``[H, W]`` uint32 RGBX values; Pillow's errors (``OSError``) pass through."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode != "RGB":
            image = image.convert("RGB")
        # Pillow keeps RGB pixels as 4 bytes, so the RGBX dump is a plain copy.
        raw = np.frombuffer(image.tobytes("raw", "RGBX"), dtype="<u4")
        width, height = image.size
    return raw.reshape(height, width)


def read_panoptic_rgbx(path: str | Path) -> np.ndarray:
    """Reads a panoptic PNG as ``[H, W]`` uint32 ``R + 256 G + 256^2 B + 256^3 X``.

    ``value & ID_MASK`` is the segment id; ``X`` is unspecified (alpha or padding). This skips
    the int64 arithmetic of ``read_panoptic_png``, for callers that can mask fewer values
    than all pixels (the PQ evaluation masks its run-length encoded pairs). The array may be
    read-only.

    Raises:
        FileNotFoundError: no such file. ValueError: not a readable PNG (names the file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        rgbx = _decode_with_libspng(data)
        return rgbx if rgbx is not None else _decode_with_pillow(data)
    except FileNotFoundError:
        raise FileNotFoundError(f"panoptic PNG not found: {path}") from None
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as error:
        # Pillow reports most damage as OSError, some (a garbled chunk after the image data)
        # as SyntaxError or EOFError; a header claiming too many pixels as a bomb error.
        raise ValueError(f"cannot read panoptic PNG {path}: {error}") from None


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Reads a panoptic PNG into ``[H, W]`` int64 ids; errors name the file."""
    ids = read_panoptic_rgbx(path).astype(np.int64)
    ids &= ID_MASK
    return ids


def write_panoptic_png(path: str | Path, ids: np.ndarray) -> None:
    """Writes ``[H, W]`` segment ids as a COCO panoptic PNG, atomically."""
    buffer = io.BytesIO()
    Image.fromarray(id2rgb(ids)).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
