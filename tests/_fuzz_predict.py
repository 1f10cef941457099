"""Fuzz cases of ``cmt-deeplab predict``: bad and unusual images, bad flags, bad outputs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from _fuzz import Expect, Workspace, bomb_jpeg, bomb_png, fuzz_case, png_bytes, scene_image


def _predict(ws: Workspace, *argv: str) -> list[str]:
    return ["predict", "--checkpoint", str(ws.checkpoint), "--output", str(ws.out),
            "--device", "cpu", *argv]


def _valid_png() -> bytes:
    return png_bytes(scene_image())


#: Files no reader can decode: name -> bytes.
BAD_IMAGES: dict[str, Callable[[], bytes]] = {
    "empty.png": lambda: b"",
    "truncated.png": lambda: _valid_png()[:60],
    "truncated.jpg": lambda: png_bytes(scene_image(), format="JPEG")[:200],
    "garbage.png": lambda: np.random.default_rng(0).bytes(500),
    "text.jpg": lambda: b"this is not an image\n",
    "html.png": lambda: b"<html><body>404 not found</body></html>",
    "bomb.png": bomb_png,
    "bomb.jpg": bomb_jpeg,
    "bad_crc.png": lambda: _flip(_valid_png(), 40),
    "header_only.png": lambda: _valid_png()[:33],
    "zero_width.png": lambda: _zero_width_png(),
    "truncated.bmp": lambda: png_bytes(scene_image(), format="BMP")[:80],
    "truncated.tif": lambda: png_bytes(scene_image(), format="TIFF")[:120],
    "truncated.webp": lambda: png_bytes(scene_image(), format="WEBP")[:40],
}


def _flip(data: bytes, offset_from_end: int) -> bytes:
    array = bytearray(data)
    array[-offset_from_end] ^= 0xFF
    return bytes(array)


def _zero_width_png() -> bytes:
    import struct
    import zlib

    data = bytearray(_valid_png())
    data[16:20] = struct.pack(">I", 0)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _bad_image_case(file_name: str, skip_bad: bool) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        folder = ws.tmp / "in"
        folder.mkdir()
        (folder / file_name).write_bytes(BAD_IMAGES[file_name]())
        if skip_bad:  # a good image beside it is still predicted; the bad one is listed
            (folder / "fine.png").write_bytes(_valid_png())
            return Expect(_predict(ws, "--input", str(folder), "--skip-bad"), ok=True,
                          names=["1 skipped"])
        return Expect(_predict(ws, "--input", str(folder)), names=[file_name])

    return case


for _name in BAD_IMAGES:
    fuzz_case(f"predict-bad-image-{_name}")(_bad_image_case(_name, skip_bad=False))
    fuzz_case(f"predict-skip-bad-image-{_name}")(_bad_image_case(_name, skip_bad=True))


def _exif_rotated(orientation: int) -> bytes:
    image = Image.fromarray(scene_image(20, 36))
    exif = image.getexif()
    exif[0x0112] = orientation
    return png_bytes(image, format="JPEG", exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    values = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 97)
    return png_bytes(Image.fromarray(values))  # mode I;16


#: Valid but unusual images: name -> bytes; predict must succeed on each.
UNUSUAL_IMAGES: dict[str, Callable[[], bytes]] = {
    "grey.png": lambda: png_bytes(Image.fromarray(scene_image()).convert("L")),
    "rgba.png": lambda: png_bytes(Image.fromarray(scene_image()).convert("RGBA")),
    "grey_alpha.png": lambda: png_bytes(Image.fromarray(scene_image()).convert("LA")),
    "palette.png": lambda: png_bytes(Image.fromarray(scene_image()).convert("P")),
    "palette_transparent.png": lambda: png_bytes(
        Image.fromarray(scene_image()).convert("P"), transparency=0),
    "one_bit.png": lambda: png_bytes(Image.fromarray(scene_image()).convert("1")),
    "sixteen_bit.png": _sixteen_bit,
    "cmyk.jpg": lambda: png_bytes(Image.fromarray(scene_image()).convert("CMYK"),
                                  format="JPEG"),
    "exif_rotated_6.jpg": lambda: _exif_rotated(6),
    "exif_rotated_8.jpg": lambda: _exif_rotated(8),
    "exif_mirrored_2.jpg": lambda: _exif_rotated(2),
    "one_pixel.png": lambda: png_bytes(scene_image(1, 1)),
    "one_row.png": lambda: png_bytes(scene_image(1, 300)),
    "one_column.png": lambda: png_bytes(scene_image(300, 1)),
    "progressive.jpg": lambda: png_bytes(scene_image(), format="JPEG", progressive=True),
    "bitmap.bmp": lambda: png_bytes(scene_image(), format="BMP"),
    "scan.tif": lambda: png_bytes(scene_image(), format="TIFF"),
    "float.tif": lambda: png_bytes(Image.fromarray(scene_image()[..., 0].astype(np.float32)
                                                   / 255.0, mode="F"), format="TIFF"),
    "web.webp": lambda: png_bytes(scene_image(), format="WEBP"),
    "gif_named.png": lambda: png_bytes(Image.fromarray(scene_image()).convert("P"),
                                       format="GIF"),
    "trailing_bytes.png": lambda: _valid_png() + b"trailing junk",
    "ünïcødé 图像.png": _valid_png,
    "name with spaces.png": _valid_png,
}


def _unusual_case(file_name: str) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        folder = ws.tmp / "ïn pút"
        folder.mkdir()
        (folder / file_name).write_bytes(UNUSUAL_IMAGES[file_name]())
        return Expect(_predict(ws, "--input", str(folder / file_name)), ok=True,
                      names=["predicted 1 image(s)"])

    return case


for _name in UNUSUAL_IMAGES:
    fuzz_case(f"predict-unusual-{_name}")(_unusual_case(_name))


#: Bad flag values: name -> (extra argv, strings the error names).
BAD_FLAGS: dict[str, tuple[list[str], list[str]]] = {
    "batch-size-0": (["--batch-size", "0"], ["--batch-size", "0"]),
    "batch-size-negative": (["--batch-size", "-3"], ["--batch-size", "-3"]),
    "batch-size-text": (["--batch-size", "two"], ["--batch-size", "two"]),
    "size-0": (["--size", "0"], ["--size", "0"]),
    "size-1": (["--size", "1"], ["--size", "1"]),
    "size-text": (["--size", "big"], ["--size", "big"]),
    "size-half": (["--size", "5x"], ["--size", "5x"]),
    "size-huge": (["--size", "99999"], ["--size", "99999"]),
    "size-negative": (["--size", "-4"], ["--size", "-4"]),
    "size-three-sides": (["--size", "4x4x4"], ["--size", "4x4x4"]),
    "device-bogus": (["--device", "gpu7"], ["--device", "gpu7"]),
    "method-bogus": (["--method", "fastest"], ["--method", "fastest"]),
    "precision-bogus": (["--precision", "int3"], ["--precision", "int3"]),
}


def _flag_case(extra: list[str], names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        argv = _predict(ws, "--input", str(ws.image))
        if "--device" in extra:
            argv = argv[: argv.index("--device")] + argv[argv.index("--device") + 2:]
        return Expect(argv + extra, names=names)

    return case


for _name, (_extra, _names) in BAD_FLAGS.items():
    fuzz_case(f"predict-flag-{_name}")(_flag_case(_extra, _names))


@fuzz_case("predict-input-missing")
def _(ws: Workspace) -> Expect:
    return Expect(_predict(ws, "--input", str(ws.tmp / "nowhere.png")), names=["nowhere.png"])


@fuzz_case("predict-input-empty-dir")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "empty").mkdir()
    return Expect(_predict(ws, "--input", str(ws.tmp / "empty")), names=["empty"])


@fuzz_case("predict-input-dir-without-images")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "docs").mkdir()
    (ws.tmp / "docs" / "notes.txt").write_text("no image here")
    return Expect(_predict(ws, "--input", str(ws.tmp / "docs")), names=["docs"])


@fuzz_case("predict-input-directory-named-png")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "folder.png").mkdir()
    return Expect(_predict(ws, "--input", str(ws.tmp / "folder.png")), names=["folder.png"])


@fuzz_case("predict-input-glob-no-match")
def _(ws: Workspace) -> Expect:
    return Expect(_predict(ws, "--input", str(ws.tmp / "*.jpeg")), names=["*.jpeg"])


@fuzz_case("predict-input-broken-symlink")
def _(ws: Workspace) -> Expect:
    os.symlink(ws.tmp / "gone.png", ws.tmp / "link.png")
    return Expect(_predict(ws, "--input", str(ws.tmp / "link.png")), names=["link.png"])


@fuzz_case("predict-input-same-stem-twice")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "in").mkdir()
    (ws.tmp / "in" / "a.png").write_bytes(_valid_png())
    (ws.tmp / "in" / "a.jpg").write_bytes(png_bytes(scene_image(), format="JPEG"))
    return Expect(_predict(ws, "--input", str(ws.tmp / "in")), names=["a.png", "a.jpg"])


def _image_info_case(content: str | None, names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        path = ws.tmp / "info.json"
        if content is not None:
            path.write_text(content)
        return Expect(_predict(ws, "--input", str(ws.image), "--image-info", str(path)),
                      names=["info.json", *names])

    return case


@fuzz_case("predict-image-info-a-directory")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "info").mkdir()
    return Expect(_predict(ws, "--input", str(ws.image), "--image-info", str(ws.tmp / "info")),
                  names=["info"])


@fuzz_case("predict-input-unclosed-glob")
def _(ws: Workspace) -> Expect:
    return Expect(_predict(ws, "--input", str(ws.tmp / "[")), names=["["])


for _name, _content, _names in [
    ("missing", None, []),
    ("not-json", "{images: [", []),
    ("a-number", "42", []),
    ("records-without-ids", json.dumps([{"name": "good.png"}]), ["id"]),
    ("records-not-mappings", json.dumps({"images": [1, 2]}), []),
    ("image-not-listed", json.dumps({"images": [{"id": 1, "file_name": "other.png"}]}),
     ["good.png"]),
]:
    fuzz_case(f"predict-image-info-{_name}")(_image_info_case(_content, _names))


@fuzz_case("predict-categories-with-checkpoint")
def _(ws: Workspace) -> Expect:
    return Expect(_predict(ws, "--input", str(ws.image), "--categories", "cats.json"),
                  names=["--categories"])


@fuzz_case("predict-model-unknown")
def _(ws: Workspace) -> Expect:
    return Expect(["predict", "--model", "cmt-deeplab-xxl", "--input", str(ws.image),
                   "--output", str(ws.out)], names=["cmt-deeplab-xxl"])


@fuzz_case("predict-model-and-checkpoint")
def _(ws: Workspace) -> Expect:
    return Expect(_predict(ws, "--input", str(ws.image), "--model", "cmt-deeplab-tiny"),
                  names=["--model"])


@fuzz_case("predict-checkpoint-missing")
def _(ws: Workspace) -> Expect:
    return Expect(["predict", "--checkpoint", str(ws.tmp / "no_ckpt"), "--input", str(ws.image),
                   "--output", str(ws.out)], names=["no_ckpt"])


@fuzz_case("predict-checkpoint-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "ckpt.bin").write_bytes(b"weights?")
    return Expect(["predict", "--checkpoint", str(ws.tmp / "ckpt.bin"), "--input",
                   str(ws.image), "--output", str(ws.out)], names=["ckpt.bin"])


@fuzz_case("predict-output-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "taken").write_text("a file")
    return Expect(["predict", "--checkpoint", str(ws.checkpoint), "--input", str(ws.image),
                   "--output", str(ws.tmp / "taken")], names=["--output", "taken"])


@fuzz_case("predict-output-parent-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "taken").write_text("a file")
    return Expect(["predict", "--checkpoint", str(ws.checkpoint), "--input", str(ws.image),
                   "--output", str(ws.tmp / "taken" / "preds")], names=["--output", "taken"])


@fuzz_case("predict-earlier-json-corrupt")
def _(ws: Workspace) -> Expect:
    (ws.out / "predictions.json").write_text('{"annotations": [')
    return Expect(_predict(ws, "--input", str(ws.image)), names=["predictions.json",
                                                                 "--overwrite"])


@fuzz_case("predict-earlier-json-wrong-shape")
def _(ws: Workspace) -> Expect:
    (ws.out / "predictions.json").write_text('{"annotations": {"a": 1}}')
    return Expect(_predict(ws, "--input", str(ws.image)), names=["predictions.json"])


@fuzz_case("predict-earlier-json-entries-without-names")
def _(ws: Workspace) -> Expect:
    (ws.out / "predictions.json").write_text('{"annotations": [{"image_id": 3}]}')
    return Expect(_predict(ws, "--input", str(ws.image)), names=["predictions.json"])


@fuzz_case("predict-two-images-one-unreadable-mid-batch")
def _(ws: Workspace) -> Expect:
    folder = ws.tmp / "in"
    folder.mkdir()
    (folder / "a_good.png").write_bytes(_valid_png())
    (folder / "b_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return Expect(_predict(ws, "--input", str(folder), "--batch-size", "2"),
                  names=["b_bad.png"])


@fuzz_case("predict-entry-point-bomb", slow=True)
def _(ws: Workspace) -> Expect:
    (ws.tmp / "bomb.png").write_bytes(bomb_png())
    return Expect(_predict(ws, "--input", str(ws.tmp / "bomb.png")), subprocess=True,
                  names=["bomb.png", "400000000 pixels"], code=2)


@fuzz_case("predict-entry-point-unusual-images", slow=True)
def _(ws: Workspace) -> Expect:
    folder = ws.tmp / "in"
    folder.mkdir()
    for name, make in UNUSUAL_IMAGES.items():
        (folder / name).write_bytes(make())
    return Expect(_predict(ws, "--input", str(folder), "--batch-size", "3"), ok=True,
                  subprocess=True, names=[f"predicted {len(UNUSUAL_IMAGES)} image(s)"])


def image_file(ws: Workspace, name: str, data: bytes) -> Path:
    path = ws.tmp / name
    path.write_bytes(data)
    return path
