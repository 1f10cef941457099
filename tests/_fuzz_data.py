"""Fuzz cases of ``data check`` and ``evaluate``: damaged splits, JSONs of the wrong shape."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from _fuzz import Expect, Workspace, bomb_png, fuzz_case
from cmt_deeplab.data.panoptic_png import read_panoptic_png, write_panoptic_png


def _check(root: Path) -> list[str]:
    return ["data", "check", "--data", str(root), "--split", "val"]


def _evaluate(ws: Workspace, root: Path, *extra: str) -> list[str]:
    return ["evaluate", "--checkpoint", str(ws.checkpoint), "--data", str(root), "--split",
            "val", "--output", str(ws.out), "--device", "cpu", *extra]


#: Edits of the annotation JSON that make it unreadable as a whole: the reader refuses the
#: split (exit 2) naming the JSON and the value. name -> (edit, strings named).
STRUCTURE_EDITS: dict[str, tuple[Callable[[dict], object], list[str]]] = {
    "a-list": (lambda d: [d], ["expected a JSON object"]),
    "no-annotations": (lambda d: {k: v for k, v in d.items() if k != "annotations"},
                       ["'annotations'"]),
    "annotations-a-dict": (lambda d: {**d, "annotations": {"1": 1}}, ["'annotations'"]),
    "images-a-string": (lambda d: {**d, "images": "all"}, ["'images'"]),
    "no-categories": (lambda d: {k: v for k, v in d.items() if k != "categories"},
                      ["'categories'"]),
    "category-without-name": (lambda d: _set(d, ("categories", 0), {"id": 1, "isthing": 1}),
                              ["malformed category record", "'name'"]),
    "category-a-number": (lambda d: _set(d, ("categories", 1), 5),
                          ["malformed category record 5"]),
    "image-id-a-list": (lambda d: _set(d, ("images", 0, "id"), [1]), ["'id'", "[1]"]),
    "image-id-a-float": (lambda d: _set(d, ("images", 0, "id"), 1.5), ["'id'", "1.5"]),
    "image-id-null": (lambda d: _set(d, ("images", 0, "id"), None), ["'id'", "None"]),
    "image-file-name-a-number": (lambda d: _set(d, ("images", 1, "file_name"), 7),
                                 ["'file_name'", "7"]),
    "image-file-name-empty": (lambda d: _set(d, ("images", 1, "file_name"), ""),
                              ["'file_name'", "''"]),
    "image-height-a-string": (lambda d: _set(d, ("images", 0, "height"), "24"),
                              ["'height'", "'24'"]),
    "image-width-negative": (lambda d: _set(d, ("images", 0, "width"), -24),
                             ["'width'", "-24"]),
    "image-record-a-string": (lambda d: _set(d, ("images", 2), "img.png"),
                              ["malformed image record", "img.png"]),
    "image-record-without-id": (lambda d: _set(d, ("images", 2), {"file_name": "x.png"}),
                                ["malformed image record", "x.png"]),
    "annotation-image-id-a-dict": (lambda d: _set(d, ("annotations", 0, "image_id"), {"a": 1}),
                                   ["'image_id'", "{'a': 1}"]),
    "annotation-image-id-a-bool": (lambda d: _set(d, ("annotations", 0, "image_id"), True),
                                   ["'image_id'", "True"]),
    "annotation-file-name-a-list": (lambda d: _set(d, ("annotations", 1, "file_name"), ["a"]),
                                    ["'file_name'", "['a']"]),
    "annotation-without-file-name": (lambda d: _drop(d, ("annotations", 1), "file_name"),
                                     ["malformed annotation record"]),
    "segments-info-a-dict": (lambda d: _set(d, ("annotations", 0, "segments_info"), {"id": 1}),
                             ["segments_info is not a list", "{'id': 1}"]),
}


def _set(data: dict, where: tuple, value: object) -> dict:
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    return data


def _drop(data: dict, where: tuple, key: str) -> dict:
    target = data
    for part in where:
        target = target[part]
    del target[key]
    return data


def _structure_case(edit: Callable[[dict], object], names: list[str], command: str):
    def case(ws: Workspace) -> Expect:
        root, data = ws.copy_split()
        ws.write_split(root, edit(data))
        argv = _check(root) if command == "check" else _evaluate(ws, root)
        return Expect(argv, names=["panoptic_val.json", *names], code=2)

    return case


for _name, (_edit, _names) in STRUCTURE_EDITS.items():
    fuzz_case(f"data-check-json-{_name}")(_structure_case(_edit, _names, "check"))
for _name in ("image-id-a-list", "annotation-image-id-a-dict", "segments-info-a-dict",
              "category-a-number", "a-list"):
    _edit, _names = STRUCTURE_EDITS[_name]
    fuzz_case(f"evaluate-json-{_name}")(_structure_case(_edit, _names, "evaluate"))


def _first_segment(data: dict) -> dict:
    return data["annotations"][0]["segments_info"][0]


#: Edits that leave the JSON readable but an item wrong: ``data check`` lists each as a
#: problem naming the file and the value (exit 1). name -> (edit(root, data), names).
ITEM_EDITS: dict[str, tuple[Callable[[Path, dict], None], list[str]]] = {
    "segment-id-a-float": (lambda r, d: _first_segment(d).__setitem__("id", 1001.5),
                           ["'id' must be an integer", "1001.5"]),
    "segment-id-a-string": (lambda r, d: _first_segment(d).__setitem__("id", "1001"),
                            ["'id' must be an integer", "'1001'"]),
    "segment-id-a-bool": (lambda r, d: _first_segment(d).__setitem__("id", True),
                          ["'id' must be an integer", "True"]),
    "segment-category-a-string": (lambda r, d: _first_segment(d).__setitem__("category_id", "1"),
                                  ["'category_id' must be an integer", "'1'"]),
    "segment-category-unknown": (lambda r, d: _first_segment(d).__setitem__("category_id", 99),
                                 ["unknown category id 99"]),
    "segment-iscrowd-2": (lambda r, d: _first_segment(d).__setitem__("iscrowd", 2),
                          ["'iscrowd' must be 0 or 1, got 2"]),
    "segment-without-id": (lambda r, d: _first_segment(d).pop("id"), ["no 'id'"]),
    "segment-a-string": (lambda r, d: d["annotations"][0]["segments_info"].append("seg"),
                         ["not a mapping", "'seg'"]),
    "segment-id-zero": (lambda r, d: _first_segment(d).__setitem__("id", 0),
                        ["segment id 0"]),
    "segment-listed-twice": (lambda r, d: d["annotations"][0]["segments_info"].append(
        dict(_first_segment(d))), ["listed more than once"]),
    "segment-not-in-png": (lambda r, d: d["annotations"][0]["segments_info"].append(
        dict(_first_segment(d), id=424242)), ["424242", "do not appear in the PNG"]),
    "png-id-not-listed": (lambda r, d: d["annotations"][0]["segments_info"].pop(0),
                          ["missing from segments_info"]),
    "area-wrong": (lambda r, d: _first_segment(d).__setitem__("area", 99999), ["area 99999"]),
    "area-a-string": (lambda r, d: _first_segment(d).__setitem__("area", "big"),
                      ["area big"]),
    "bbox-wrong": (lambda r, d: _first_segment(d).__setitem__("bbox", [0, 0, 1, 1]),
                   ["bbox [0, 0, 1, 1]"]),
    "bbox-a-string": (lambda r, d: _first_segment(d).__setitem__("bbox", "0 0 1 1"),
                      ["bbox 0 0 1 1"]),
    "json-size-wrong": (lambda r, d: d["images"][0].__setitem__("height", 25),
                        ["size mismatch", "JSON 25x24"]),
    "repeated-image-id": (lambda r, d: d["images"].append(dict(d["images"][0],
                                                               file_name="copy.png")),
                          ["image id 1 has 2 image records"]),
    "two-annotations-one-image": (lambda r, d: d["annotations"].append(dict(d["annotations"][1])),
                                  ["image id 2 has 2 annotations"]),
    "image-without-annotation": (lambda r, d: d["annotations"].pop(2),
                                 ["image id 3 has no annotation"]),
    "annotation-without-image": (lambda r, d: d["images"].pop(2), ["has no image record"]),
    "image-missing": (lambda r, d: (r / "val" / d["images"][0]["file_name"]).unlink(),
                      ["000000000001.png", "not found"]),
    "image-corrupt": (lambda r, d: (r / "val" / d["images"][0]["file_name"]).write_bytes(
        b"\x89PNG junk"), ["000000000001.png", "cannot read image"]),
    "image-bomb": (lambda r, d: (r / "val" / d["images"][0]["file_name"]).write_bytes(
        bomb_png()), ["000000000001.png", "400000000 pixels"]),
    "image-empty": (lambda r, d: (r / "val" / d["images"][1]["file_name"]).write_bytes(b""),
                    ["000000000002.png", "cannot read image"]),
    "image-other-size": (lambda r, d: _resize_image(r / "val" / d["images"][1]["file_name"]),
                         ["size mismatch", "image 20x24"]),
    "png-missing": (lambda r, d: _png(r, d, 0).unlink(), ["000000000001.png", "not found"]),
    "png-corrupt": (lambda r, d: _png(r, d, 1).write_bytes(b"\x89PNG\r\n\x1a\nzz"),
                    ["000000000002.png", "cannot read panoptic PNG"]),
    "png-bomb": (lambda r, d: _png(r, d, 2).write_bytes(bomb_png()),
                 ["000000000003.png", "400000000 pixels"]),
    "png-is-a-directory": (lambda r, d: _replace_with_dir(_png(r, d, 2)),
                           ["000000000003.png"]),
    "png-other-size": (lambda r, d: write_panoptic_png(
        _png(r, d, 0), read_panoptic_png(_png(r, d, 0))[:10]), ["size mismatch", "PNG 10x24"]),
}


def _png(root: Path, data: dict, index: int) -> Path:
    return root / "annotations" / "panoptic_val" / data["annotations"][index]["file_name"]


def _resize_image(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(path)


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _item_case(edit: Callable[[Path, dict], None], names: list[str], quick: bool = False):
    def case(ws: Workspace) -> Expect:
        root, data = ws.copy_split()
        edit(root, data)
        ws.write_split(root, data)
        return Expect(_check(root) + (["--quick"] if quick else []), names=["PROBLEM", *names],
                      code=1)

    return case


for _name, (_edit, _names) in ITEM_EDITS.items():
    fuzz_case(f"data-check-{_name}")(_item_case(_edit, _names))
fuzz_case("data-check-quick-image-bomb")(_item_case(*ITEM_EDITS["image-bomb"], quick=True))


def _evaluate_refuses(edit: Callable[[Path, dict], None], names: list[str], *extra: str):
    def case(ws: Workspace) -> Expect:
        root, data = ws.copy_split()
        edit(root, data)
        ws.write_split(root, data)
        return Expect(_evaluate(ws, root, *extra), names=names, code=2)

    return case


for _name in ("repeated-image-id", "two-annotations-one-image", "image-bomb", "png-bomb",
              "segment-id-a-float", "image-corrupt", "png-is-a-directory"):
    fuzz_case(f"evaluate-{_name}")(_evaluate_refuses(*ITEM_EDITS[_name]))
for _name in ("repeated-image-id", "two-annotations-one-image"):
    fuzz_case(f"evaluate-skip-bad-{_name}")(_evaluate_refuses(*ITEM_EDITS[_name], "--skip-bad"))


@fuzz_case("evaluate-zero-images")
def _(ws: Workspace) -> Expect:
    root, data = ws.copy_split()
    ws.write_split(root, {**data, "images": [], "annotations": []})
    return Expect(_evaluate(ws, root), names=["panoptic_val.json", "no annotated images"], code=2)


@fuzz_case("evaluate-skip-bad-every-image-bad")
def _(ws: Workspace) -> Expect:
    root, data = ws.copy_split()
    for path in (root / "val").iterdir():
        path.write_bytes(b"not a png")
    return Expect(_evaluate(ws, root, "--skip-bad"), names=["3 skipped", "nothing written"],
                  code=2)


def _skip_one(edit_name: str) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        root, data = ws.copy_split()
        ITEM_EDITS[edit_name][0](root, data)
        ws.write_split(root, data)
        return Expect(_evaluate(ws, root, "--skip-bad"), ok=True,
                      names=["skipped", *ITEM_EDITS[edit_name][1], "images: 2"])

    return case


for _name in ("image-bomb", "png-bomb", "image-corrupt", "segment-id-a-float"):
    fuzz_case(f"evaluate-skip-bad-{_name}")(_skip_one(_name))


#: Bad evaluate flags: name -> (extra argv, names).
EVALUATE_FLAGS: dict[str, tuple[list[str], list[str]]] = {
    "batch-size-0": (["--batch-size", "0"], ["--batch-size", "0"]),
    "max-images-negative": (["--max-images", "-2"], ["--max-images", "-2"]),
    "size-bad": (["--size", "0x24"], ["--size", "0x24"]),
    "method-bad": (["--method", "best"], ["--method", "best"]),
}


def _evaluate_flag(extra: list[str], names: list[str]):
    def case(ws: Workspace) -> Expect:
        return Expect(_evaluate(ws, ws.data, *extra), names=names)

    return case


for _name, (_extra, _names) in EVALUATE_FLAGS.items():
    fuzz_case(f"evaluate-flag-{_name}")(_evaluate_flag(_extra, _names))


@fuzz_case("evaluate-output-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "metrics").write_text("taken")
    argv = _evaluate(ws, ws.data)
    argv[argv.index("--output") + 1] = str(ws.tmp / "metrics")
    return Expect(argv, names=["--output", "metrics"])


@fuzz_case("evaluate-other-categories")
def _(ws: Workspace) -> Expect:
    root, data = ws.copy_split()
    data["categories"] = data["categories"][:-1]
    ws.write_split(root, data)
    return Expect(_evaluate(ws, root), names=["categories"])


@fuzz_case("evaluate-split-missing")
def _(ws: Workspace) -> Expect:
    argv = _evaluate(ws, ws.data)
    argv[argv.index("--split") + 1] = "train"
    return Expect(argv, names=["'train'", "panoptic_train.json"])


@fuzz_case("data-check-root-missing")
def _(ws: Workspace) -> Expect:
    return Expect(_check(ws.tmp / "no_root"), names=["no_root"], code=2)


@fuzz_case("data-check-paths-incomplete")
def _(ws: Workspace) -> Expect:
    return Expect(["data", "check", "--images", str(ws.data / "val")],
                  names=["--annotations", "--panoptic-dir"], code=2)


@fuzz_case("data-check-json-not-json")
def _(ws: Workspace) -> Expect:
    root, _ = ws.copy_split()
    path = root / "annotations" / "panoptic_val.json"
    path.write_text("{'images': [")
    return Expect(_check(root), names=["panoptic_val.json"], code=2)


@fuzz_case("data-check-json-empty-file")
def _(ws: Workspace) -> Expect:
    root, _ = ws.copy_split()
    path = root / "annotations" / "panoptic_val.json"
    path.write_bytes(b"")
    return Expect(_check(root), names=["panoptic_val.json"], code=2)


@fuzz_case("data-check-json-binary")
def _(ws: Workspace) -> Expect:
    root, _ = ws.copy_split()
    path = root / "annotations" / "panoptic_val.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    return Expect(_check(root), names=["panoptic_val.json"], code=2)


@fuzz_case("data-check-zero-images")
def _(ws: Workspace) -> Expect:
    root, data = ws.copy_split()
    ws.write_split(root, {**data, "images": [], "annotations": []})
    return Expect(_check(root), ok=True, names=["images: 0", "problems: 0"])


@fuzz_case("data-check-max-problems-negative")
def _(ws: Workspace) -> Expect:
    return Expect(_check(ws.data) + ["--max-problems", "-1"], names=["--max-problems", "-1"],
                  code=2)
