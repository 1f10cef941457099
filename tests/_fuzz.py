"""The command-line fuzz suite's machinery: a workspace of small valid inputs, makers of bad
ones, and the runner that checks what every case must satisfy.

A case is a function ``case(ws) -> Expect`` registered with ``@fuzz_case(name)``; it writes
its bad input under ``ws.tmp`` (copies of the shared valid files when it alters them) and
returns the command line, whether the command must fail or succeed, and the strings its
output must name (the file and the value at fault). ``check_case`` then runs the command
(in-process through ``main()``, or in a subprocess where the real entry point matters) and
asserts, for a failing case: a non-zero exit, no traceback, every named string in the
output, and the output folder byte-for-byte as it was; for a succeeding case: exit 0, no
traceback, and the earlier outputs still there.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cmt_deeplab
from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.data.panoptic_png import write_panoptic_png
from cmt_deeplab.data.synthetic import generate_synthetic_dataset, synthetic_dataset_info
from cmt_deeplab.model_dir import load_model_dir, save_model_dir

#: A cmt-deeplab-tiny narrower still: every code path, built and run in milliseconds.
SMALL_KWARGS = {"backbone_num_blocks": (1, 1, 1, 1), "width_multiplier": 0.125,
                "stem_width_multiplier": 0.125, "memory_channels": 32,
                "transformer_ffn_channels": 32, "embedding_channels": 16, "head_channels": 16,
                "semantic_channels": 16, "pixel_feature_dim": 16, "transformer_filters": 16,
                "num_heads": 2, "axial_num_heads": 2, "num_slots": 4}
#: The canvas of the workspace checkpoint: small enough that a forward pass is cheap.
CANVAS = 24


@dataclass
class Expect:
    """What a case runs and what it must give."""

    argv: list[str]
    ok: bool = False               # True: a valid but unusual input, the command must succeed
    names: list[str] = field(default_factory=list)  # strings the output must contain
    subprocess: bool = False       # run the installed entry point instead of main()
    code: int | None = None        # an exact exit status, when it matters


@dataclass
class Workspace:
    """Shared valid inputs (read-only) and this case's own folders."""

    shared: Path                   # checkpoint/, data/ (a 3-image split), images/: copy
                                   # them (copy_checkpoint, copy_split) before editing
    tmp: Path                      # this case's scratch folder
    out: Path                      # this case's output folder, holding earlier outputs

    @property
    def checkpoint(self) -> Path:
        return self.shared / "checkpoint"

    @property
    def data(self) -> Path:
        return self.shared / "data"

    @property
    def image(self) -> Path:
        return self.shared / "images" / "good.png"

    def copy_checkpoint(self) -> Path:
        return Path(shutil.copytree(self.checkpoint, self.tmp / "ckpt"))

    def copy_split(self) -> tuple[Path, dict]:
        """A copy of the data root and its annotation JSON (to edit and write back)."""
        root = Path(shutil.copytree(self.data, self.tmp / "data"))
        return root, json.loads((root / "annotations" / "panoptic_val.json").read_text())

    def write_split(self, root: Path, data: object) -> Path:
        path = root / "annotations" / "panoptic_val.json"
        path.write_text(json.dumps(data))
        return path


CASES: dict[str, Callable[[Workspace], Expect]] = {}
#: Cases of the long tail (a model built for real, a subprocess, a training step).
SLOW_CASES: set[str] = set()


def fuzz_case(name: str, slow: bool = False) -> Callable:
    """Registers ``case(ws) -> Expect`` under a unique name."""

    def register(function: Callable[[Workspace], Expect]) -> Callable[[Workspace], Expect]:
        assert name not in CASES, f"duplicate fuzz case {name}"
        CASES[name] = function
        if slow:
            SLOW_CASES.add(name)
        return function

    return register


# -- the shared workspace -------------------------------------------------------------------
def build_shared(root: Path) -> Path:
    """A checkpoint of the small model for the synthetic categories, a 3-image split of
    24x24 images, and one good image."""
    info = synthetic_dataset_info()
    torch.manual_seed(0)
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=info.num_classes,
                                    num_thing_classes=info.num_thing_classes, **SMALL_KWARGS)
    save_model_dir(root / "checkpoint", model.eval(), {
        "data": info, "input": {"crop": [CANVAS, CANVAS], "eval_size": [CANVAS, CANVAS]}})
    generate_synthetic_dataset(root / "data", "val", num_images=3, size=CANVAS, seed=0)
    (root / "images").mkdir()
    Image.fromarray(_scene(30, 20)).save(root / "images" / "good.png")
    return root


def fill_earlier_outputs(out: Path) -> None:
    """What an earlier run left in the output folder: a prediction, metrics, a note."""
    out.mkdir(parents=True)
    (out / "earlier.txt").write_text("written by an earlier run\n")
    write_panoptic_png(out / "panoptic" / "earlier.png", np.zeros((4, 4), np.int64))
    (out / "predictions.json").write_text(json.dumps({"annotations": [
        {"image_id": "earlier", "file_name": "earlier.png", "segments_info": []}]}))
    (out / "metrics.json").write_text(json.dumps({"All": {"pq": 0.5}, "num_images": 1}))
    (out / "skipped.json").write_text("[]")


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class CachedCheckpoint:
    """``load_model_dir`` that loads the shared checkpoint once and hands out that model.

    Building a model costs a second on a busy machine, most of it random initialisation that
    loading then overwrites; dozens of cases read the same valid checkpoint. The model is
    shared: ``predict`` rewrites it for inference in place, which is idempotent (BNs folded
    once, then gone), and ``evaluate`` and ``visualize`` run on it before or after that rewrite
    alike (tried in both orders). Every other directory (the cases' damaged copies) is loaded
    for real.
    """

    def __init__(self, shared: Path) -> None:
        self.path = (shared / "checkpoint").resolve()
        self.model, self.config = load_model_dir(self.path)

    def __call__(self, path, device=None):
        if Path(path).resolve() == self.path:
            return self.model, copy.deepcopy(self.config)
        return load_model_dir(path, device)


# -- running and checking -------------------------------------------------------------------
def run_in_process(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main.main(argv)
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue() + err.getvalue()


def run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "cmt_deeplab.cli.main", *argv], cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def check_case(name: str, shared: Path, tmp: Path, monkeypatch) -> None:
    ws = Workspace(shared=shared, tmp=tmp, out=tmp / "out")
    fill_earlier_outputs(ws.out)
    expect = CASES[name](ws)
    before = snapshot(ws.out)
    if expect.subprocess:
        code, output = run_subprocess(expect.argv, tmp)
    else:
        code, output = run_in_process(expect.argv)
    context = f"case {name}: exit {code}\n{output}"
    assert "Traceback" not in output, context
    if expect.ok:
        assert code == 0, context
        after = snapshot(ws.out)
        for kept in ("earlier.txt", "panoptic/earlier.png"):
            assert after[kept] == before[kept], context
    else:
        assert code != 0, context
        if expect.code is not None:
            assert code == expect.code, context
        assert snapshot(ws.out) == before, f"{context}\nthe output folder changed"
    for text in expect.names:
        assert str(text) in output, f"{context}\nthe output does not name {text!r}"


# -- makers of inputs -----------------------------------------------------------------------
def _scene(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[: height // 2, : width // 2] = (200, 30, 30)
    return image


def png_bytes(image: Image.Image | np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(
        buffer, format=save.pop("format", "PNG"), **save)
    return buffer.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid small PNG whose header claims ``width x height`` (CRC fixed up)."""
    data = bytearray(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def bomb_jpeg(width: int = 60000, height: int = 60000) -> bytes:
    """A small JPEG whose frame header claims ``width x height``."""
    data = bytearray(png_bytes(np.zeros((8, 8, 3), np.uint8), format="JPEG"))
    marker = data.index(b"\xff\xc0")
    data[marker + 5:marker + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def scene_image(height: int = 30, width: int = 20) -> np.ndarray:
    return _scene(height, width)
