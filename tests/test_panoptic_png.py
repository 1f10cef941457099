"""Panoptic PNG codec: the libspng fast path reads the ids Pillow reads, errors name the file."""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmt_deeplab.data import panoptic_png
from cmt_deeplab.data.panoptic_png import (
    id2rgb,
    read_panoptic_png,
    read_panoptic_rgbx,
    rgb2id,
    write_panoptic_png,
)

H, W = 13, 11  # odd sizes: rows are not a multiple of any word size


def _pillow_ids(path: Path) -> np.ndarray:
    """``[H, W]`` int64 ids as the codec read them before the fast path: Pillow's RGB."""
    with Image.open(path) as image:
        return rgb2id(np.asarray(image.convert("RGB")))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload))


def _adam7_passes(samples: np.ndarray) -> list[np.ndarray]:
    starts_steps = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2),
                    (0, 1, 2, 2), (1, 0, 2, 1)]
    return [samples[y0::dy, x0::dx] for y0, x0, dy, dx in starts_steps]


def _png(samples: np.ndarray, color_type: int, bit_depth: int = 8, palette: bytes | None = None,
         transparency: bytes | None = None, interlace: bool = False) -> bytes:
    """A PNG written by hand (filter 0), for the layouts Pillow does not write.

    ``samples``: ``[H, W]`` or ``[H, W, C]`` sample values of ``bit_depth`` bits.
    """
    height, width = samples.shape[:2]

    def scanlines(image: np.ndarray) -> bytes:
        lines = []
        for row in image:
            if bit_depth < 8:
                bits = np.unpackbits(row.astype(np.uint8)[:, None], axis=1)[:, 8 - bit_depth:]
                packed = np.packbits(bits.ravel()).tobytes()
            else:
                packed = row.astype(">u2" if bit_depth == 16 else np.uint8).tobytes()
            lines.append(b"\0" + packed)
        return b"".join(lines)

    images = _adam7_passes(samples) if interlace else [samples]
    raw = b"".join(scanlines(image) for image in images if image.size)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlace))
    chunks = [_chunk(b"IHDR", header)]
    if palette is not None:
        chunks.append(_chunk(b"PLTE", palette))
    if transparency is not None:
        chunks.append(_chunk(b"tRNS", transparency))
    chunks += [_chunk(b"IDAT", zlib.compress(raw)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def _pillow_png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _variants() -> dict[str, tuple[bytes, np.ndarray | None, bool]]:
    """name -> (PNG bytes, expected ids or None for "as Pillow", fast path expected)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    grey_alpha = rng.integers(0, 256, (H, W, 2), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (H, W), dtype=np.uint8)
    grey_id = grey.astype(np.int64) * 0x010101  # R = G = B
    return {
        "rgb": (_png(rgb, 2), rgb2id(rgb), True),
        "rgb interlaced": (_png(rgb, 2, interlace=True), rgb2id(rgb), True),
        "rgb + tRNS": (_png(rgb, 2, transparency=rgb[0, 0].astype(">u2").tobytes()),
                       rgb2id(rgb), True),
        "rgba": (_png(rgba, 6), rgb2id(rgba[..., :3]), True),
        "rgba interlaced": (_png(rgba, 6, interlace=True), rgb2id(rgba[..., :3]), True),
        "grey": (_png(grey, 0), grey_id, True),
        "grey interlaced": (_png(grey, 0, interlace=True), grey_id, True),
        "grey + alpha": (_png(grey_alpha, 4), grey_alpha[..., 0].astype(np.int64) * 0x010101,
                         True),
        "palette": (_png(index, 3, palette=palette.tobytes()), rgb2id(palette[index]), True),
        "palette + tRNS": (_png(index, 3, palette=palette.tobytes(), transparency=bytes(range(99))),
                           rgb2id(palette[index]), True),
        "palette interlaced": (_png(index, 3, palette=palette.tobytes(), interlace=True),
                               rgb2id(palette[index]), True),
        # Indices past a short palette: both decoders give black.
        "short palette": (_png(index, 3, palette=palette[:10].tobytes()), None, True),
        "grey 16-bit": (_png(rng.integers(0, 2**16, (H, W)), 0, bit_depth=16), None, False),
        "grey 16-bit, small values": (_png(rng.integers(0, 300, (H, W)), 0, bit_depth=16), None,
                                      False),
        "rgb 16-bit": (_png(rng.integers(0, 2**16, (H, W, 3)), 2, bit_depth=16), None, False),
        "rgba 16-bit": (_png(rng.integers(0, 2**16, (H, W, 4)), 6, bit_depth=16), None, False),
        "grey 1-bit": (_png(rng.integers(0, 2, (H, W)), 0, bit_depth=1), None, False),
        "grey 4-bit": (_png(rng.integers(0, 16, (H, W)), 0, bit_depth=4), None, False),
        "palette 2-bit": (_png(rng.integers(0, 4, (H, W)), 3, bit_depth=2,
                               palette=palette[:4].tobytes()), None, False),
        "pillow RGB": (_pillow_png(Image.fromarray(rgb)), rgb2id(rgb), True),
        "pillow RGBA": (_pillow_png(Image.fromarray(rgba)), rgb2id(rgba[..., :3]), True),
        "pillow L": (_pillow_png(Image.fromarray(grey)), grey_id, True),
        "pillow P": (_pillow_png(Image.fromarray(rgb).convert("P")), None, True),
        "pillow I;16": (_pillow_png(Image.fromarray(rng.integers(0, 2**16, (H, W))
                                                    .astype(np.uint16))), None, False),
    }


VARIANTS = _variants()


def test_rgb2id_id2rgb_known_values() -> None:
    ids = np.array([[0, 1, 256], [65536, 0xABCDEF, 256**3 - 1]])
    rgb = id2rgb(ids)
    assert rgb[1, 1].tolist() == [0xEF, 0xCD, 0xAB]
    assert rgb[0, 2].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    with pytest.raises(ValueError, match="256"):
        id2rgb(np.array([[256**3]]))


def test_write_read_round_trip(tmp_path: Path) -> None:
    ids = np.random.default_rng(1).integers(0, 256**3, (H, W))
    write_panoptic_png(tmp_path / "a.png", ids)
    read = read_panoptic_png(tmp_path / "a.png")
    assert read.dtype == np.int64
    np.testing.assert_array_equal(read, ids)
    rgbx = read_panoptic_rgbx(tmp_path / "a.png")
    assert rgbx.dtype == np.uint32 and rgbx.shape == (H, W)
    np.testing.assert_array_equal(rgbx & panoptic_png.ID_MASK, ids)


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")  # Pillow's, harmless
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_png_layout_reads_as_pillow(tmp_path: Path, name: str) -> None:
    data, expected, fast = VARIANTS[name]
    path = tmp_path / "a.png"
    path.write_bytes(data)
    # The layouts the fast path claims are decoded by it (where pyspng is installed).
    assert (panoptic_png._decode_with_libspng(data) is not None) == (
        fast and panoptic_png._pyspng is not None)
    ids = read_panoptic_png(path)
    np.testing.assert_array_equal(ids, _pillow_ids(path))
    if expected is not None:
        np.testing.assert_array_equal(ids, expected)


def test_real_coco_pngs_take_the_fast_path_and_equal_pillow(coco_sample: Path) -> None:
    pytest.importorskip("pyspng", reason="pyspng not installed: no fast path to compare")
    annotations = json.loads((coco_sample / "panoptic_examples.json").read_text())["annotations"]
    for annotation in annotations:
        path = coco_sample / "panoptic_examples" / annotation["file_name"]
        assert panoptic_png._decode_with_libspng(path.read_bytes()) is not None
        ids = read_panoptic_png(path)
        np.testing.assert_array_equal(ids, _pillow_ids(path))
        segment_ids = {segment["id"] for segment in annotation["segments_info"]}
        assert set(np.unique(ids).tolist()) - {0} == segment_ids


def test_missing_file_and_not_a_png_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_panoptic_png(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not a PNG")
    with pytest.raises(ValueError, match="text.png"):
        read_panoptic_png(tmp_path / "text.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match="folder.png"):
        read_panoptic_png(tmp_path / "folder.png")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_png_raises_naming_the_file(tmp_path: Path, fraction: float) -> None:
    ids = np.random.default_rng(2).integers(0, 256**3, (40, 30))
    write_panoptic_png(tmp_path / "full.png", ids)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:int(fraction * len(data))])
    with pytest.raises(ValueError, match="cut.png"):
        read_panoptic_png(tmp_path / "cut.png")


def test_damaged_image_data_raises_where_pyspng_alone_would_not(tmp_path: Path) -> None:
    """pyspng ignores CRCs and the zlib checksum; the codec checks the CRCs, so a flipped bit in
    the compressed pixels goes to Pillow, which raises, rather than giving wrong ids."""
    pyspng = pytest.importorskip("pyspng", reason="pyspng not installed: no fast path")
    ids = np.random.default_rng(3).integers(0, 256**3, (40, 30))
    write_panoptic_png(tmp_path / "full.png", ids)
    data = (tmp_path / "full.png").read_bytes()
    idat = data.index(b"IDAT") + 4
    silent_damage = 0
    for position in range(idat + 2, idat + 200):  # past the 2-byte zlib header
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        try:
            rgb = pyspng.load(bytes(damaged), "RGB")
        except RuntimeError:
            continue
        if rgb.shape[:2] != ids.shape or (rgb2id(rgb) != ids).any():
            silent_damage += 1
            (tmp_path / "bad.png").write_bytes(bytes(damaged))
            with pytest.raises(ValueError, match="bad.png"):
                read_panoptic_png(tmp_path / "bad.png")
    assert silent_damage > 10  # the check above did run


def test_bad_header_crc_goes_to_pillow(tmp_path: Path) -> None:
    data = bytearray(VARIANTS["rgb"][0])
    data[29] ^= 0xFF  # the IHDR CRC
    assert panoptic_png._decode_with_libspng(bytes(data)) is None
    (tmp_path / "a.png").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="a.png"):  # as Pillow: "broken PNG file"
        read_panoptic_png(tmp_path / "a.png")


def test_pillow_fallback_without_pyspng(tmp_path: Path, monkeypatch) -> None:
    # A fresh copy of the module, imported while pyspng cannot be.
    monkeypatch.setitem(sys.modules, "pyspng", None)
    spec = importlib.util.spec_from_file_location("_panoptic_png_without_pyspng",
                                                  panoptic_png.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._pyspng is None
    for name in ("rgb", "palette", "grey 16-bit"):
        path = tmp_path / "a.png"
        path.write_bytes(VARIANTS[name][0])
        assert module._decode_with_libspng(VARIANTS[name][0]) is None
        np.testing.assert_array_equal(module.read_panoptic_png(path), _pillow_ids(path))
    (tmp_path / "cut.png").write_bytes(VARIANTS["rgb"][0][:100])
    with pytest.raises(ValueError, match="cut.png"):
        module.read_panoptic_png(tmp_path / "cut.png")


def test_pillow_fallback_when_pyspng_raises(tmp_path: Path, monkeypatch) -> None:
    class _Refusing:
        @staticmethod
        def load(data: bytes, format: str | None = None) -> np.ndarray:
            raise RuntimeError("pyspng: could not decode image")

    monkeypatch.setattr(panoptic_png, "_pyspng", _Refusing)
    data, expected, _ = VARIANTS["rgba"]
    (tmp_path / "a.png").write_bytes(data)
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "a.png"), expected)
