"""load_image: every Pillow mode becomes [H, W, 3] uint8 RGB; bad files raise naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cmt_deeplab.data.image_io import image_size, load_image


def _rgb_pattern(height: int = 6, width: int = 8) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    pixels = _rgb_pattern()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.dtype == np.uint8 and loaded.shape == (6, 8, 3)
    np.testing.assert_array_equal(loaded, pixels)
    assert loaded.flags.writeable


def test_exif_orientation_is_applied(tmp_path):
    # Left half black, right half white; EXIF orientation 6 = rotate 90 degrees clockwise
    # for display, so the viewer sees black on top, white at the bottom, and H/W swap.
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", quality=100, exif=exif)
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.shape == (32, 16, 3)
    assert loaded[:12].mean() < 10 and loaded[20:].mean() > 245
    assert image_size(tmp_path / "rot.jpg") == (32, 16)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    loaded = load_image(tmp_path / "g.png")
    assert loaded.shape == (6, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def test_palette_with_and_without_transparency(tmp_path):
    palette_image = Image.new("P", (4, 2))
    palette_image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette_image.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    palette_image.save(tmp_path / "p.png")
    palette_image.save(tmp_path / "pt.png", transparency=0)
    expected = np.array([[[10, 20, 30], [200, 100, 50], [10, 20, 30], [200, 100, 50]],
                         [[200, 100, 50], [200, 100, 50], [10, 20, 30], [10, 20, 30]]])
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), expected)
    with Image.open(tmp_path / "pt.png") as check:
        assert "transparency" in check.info
    np.testing.assert_array_equal(load_image(tmp_path / "pt.png"), expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path, mode):
    pixels = _rgb_pattern()
    alpha = np.zeros((6, 8), dtype=np.uint8)  # fully transparent: colours must survive
    rgba = np.dstack([pixels, alpha])
    image = Image.fromarray(rgba, mode="RGBA")
    if mode == "LA":
        image = image.convert("LA")
    image.save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    expected = pixels if mode == "RGBA" else np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(loaded, expected)
    assert loaded.max() > 0


def test_cmyk_converted_to_rgb(tmp_path):
    cmyk = Image.fromarray(_rgb_pattern()).convert("CMYK")
    cmyk.save(tmp_path / "c.tif")
    loaded = load_image(tmp_path / "c.tif")
    np.testing.assert_array_equal(loaded, np.asarray(cmyk.convert("RGB")))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000], [32768, 65278, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as check:
        assert check.mode.startswith("I")
    loaded = load_image(tmp_path / "d.png")
    expected = np.array([[0, 1, 4], [128, 254, 255]], dtype=np.uint8)  # round(v / 257)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], expected)


def test_mode_i_tiff_is_treated_as_sixteen_bit(tmp_path):
    values = np.array([[0, 514, 65535]], dtype=np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "i.tif")
    loaded = load_image(tmp_path / "i.tif")
    np.testing.assert_array_equal(loaded[..., 1], [[0, 2, 255]])


def test_truncated_jpeg_raises_value_error_naming_file(tmp_path):
    Image.fromarray(_rgb_pattern(64, 64)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")


def test_garbage_missing_and_directory(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="junk.png"):
        load_image(tmp_path / "junk.png")
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        load_image(tmp_path / "nothere.jpg")
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)
