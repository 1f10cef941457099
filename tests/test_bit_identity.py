"""Bit identity of training and of the commands that read its result, against recorded values.

A tiny ``train`` run (cmt-deeplab-tiny from the synthetic preset, 6 steps on 40 px synthetic
images, drop path on, an evaluation and a training state every 3 steps), then a resume of its
last 3 steps from the step-3 state, ``train --dry-run`` on random data, and ``predict``,
``evaluate`` and ``visualize`` on the trained model directory. The test compares with
``tests/fixtures/bit_identity.json``: every logged scalar of every step exactly (each loss term,
learning rate, gradient norm, PQ), and the SHA-256 of every file the commands write (weights,
optimizer and RNG state, configs, PNGs, JSON).

Exact equality holds on the machine and software the values were recorded with; CPU kernels
of another instruction set, torch or numpy round differently, so elsewhere the test is skipped
with the fingerprint that differs. To record on a new machine, from code whose outputs are
known to be right (``git stash`` the change under test):
``python tests/test_bit_identity.py`` (rewrites the fixture).

Every command runs in a subprocess with one thread, as a user would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "bit_identity.json"
STEPS = 6
TRAIN = [
    "train", "--config", "synthetic_cmt_deeplab_tiny", "--crop", "40", "--batch-size", "2",
    "--steps", str(STEPS), "--save-every", "3", "--eval-every", "3", "--num-workers", "0",
    "--seed", "5", "--no-progress",
    "--set", "run.log_every=1", "--set", "run.keep_last=0", "--set", "model.num_slots=8",
    "--set", "schedule.warmup_steps=2", "--set", "evaluation.max_images=3",
    # After six steps void wins every slot (class confidences ~0.02) and masks are near
    # uniform (~0.125 each): thresholds below that keep segments to score.
    "--set", "evaluation.class_threshold=0.01", "--set", "evaluation.pixel_threshold=0.13",
    "--set", "model.overrides.drop_path_keep_prob=0.7",  # drop path: the global RNG in use
]


def fingerprint() -> dict[str, str]:
    """What the recorded bits depend on besides the code."""
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


#: The Python API on a model directory, with thresholds low enough for segments to appear.
PREDICT_API = """
import hashlib, json, sys
from pathlib import Path
from cmt_deeplab.inference import Predictor
images = sorted(Path(sys.argv[2]).iterdir())
out = {}
for method, thresholds in (("pixelwise", {"class_threshold": 0.01, "pixel_threshold": 0.13}),
                           ("maskwise", {"thing_threshold": 0.01, "stuff_threshold": 0.01,
                                         "pixel_threshold": 0.13, "overlap_threshold": 0.3})):
    predictor = Predictor.from_checkpoint(sys.argv[1], device="cpu", method=method,
                                          batch_size=2, **thresholds)
    for image, result in zip(images, predictor([str(p) for p in images])):
        out[f"{method}/{image.name}"] = {
            "panoptic": hashlib.sha256(result.panoptic.tobytes()).hexdigest(),
            "semantic": hashlib.sha256(result.semantic.tobytes()).hexdigest(),
            "segments_info": result.segments_info}
print(json.dumps(out))
"""


def _cli(*argv: str, cwd: Path) -> str:
    return _python("-m", "cmt_deeplab.cli.main", *argv, cwd=cwd)


def _python(*argv: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, *argv], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr[-3000:]}"
    return done.stdout


def _sha256(path: Path, replace: tuple[str, str] | None = None) -> str:
    data = path.read_bytes()
    if replace is not None:  # configs name the temporary data folder
        data = data.replace(replace[0].encode(), replace[1].encode())
    return hashlib.sha256(data).hexdigest()


def _scalars(run_dir: Path) -> dict[str, list[list[float]]]:
    """Every TensorBoard scalar: ``tag -> [[step, value], ...]`` (float32 values, exact)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[list[float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend([e.step, e.value]
                                               for e in accumulator.Scalars(tag))
    return dict(sorted(scalars.items()))


def record(work: Path) -> dict[str, Any]:
    """Runs every command in ``work`` and returns what the fixture holds."""
    from cmt_deeplab.data.synthetic import generate_synthetic_dataset

    data = work / "data"
    generate_synthetic_dataset(data, "train", num_images=8, size=40, seed=11)
    generate_synthetic_dataset(data, "val", num_images=3, size=40, seed=12)
    placeholder = (str(work), "WORK")
    files: dict[str, str] = {}

    run = work / "run"
    _cli(*TRAIN, "--data", str(data), "--out", str(run), cwd=work)
    scalars = _scalars(run)
    for name in ("model.safetensors", "eval.json"):
        files[f"run/{name}"] = _sha256(run / name)
    for name in ("config.yaml", "train_config.yaml"):
        files[f"run/{name}"] = _sha256(run / name, placeholder)
    for step in ("step_0000003", "step_0000006"):
        for name in ("model.safetensors", "state.safetensors", "state.json", "COMPLETE"):
            files[f"run/checkpoints/{step}/{name}"] = _sha256(run / "checkpoints" / step / name)
        files[f"run/checkpoints/{step}/config.yaml"] = _sha256(
            run / "checkpoints" / step / "config.yaml", placeholder)

    # Resume the last three steps from the step-3 state: the same bits again.
    resumed = work / "resumed"
    resumed.mkdir()
    (resumed / "checkpoints").mkdir()
    import shutil

    shutil.copytree(run / "checkpoints" / "step_0000003",
                    resumed / "checkpoints" / "step_0000003")
    shutil.copy(run / "train_config.yaml", resumed / "train_config.yaml")
    _cli(*TRAIN, "--data", str(data), "--out", str(resumed), "--resume", cwd=work)
    resumed_files = {
        "model.safetensors": _sha256(resumed / "model.safetensors"),
        "state.safetensors": _sha256(resumed / "checkpoints" / "step_0000006" / "state.safetensors"),
        "state.json": _sha256(resumed / "checkpoints" / "step_0000006" / "state.json"),
    }
    resumed_scalars = {tag: [v for v in values if v[0] > 3]
                       for tag, values in _scalars(resumed).items()}

    dry = json.loads(_cli(*TRAIN, "--set", "data.train_split=null",
                          "--set", "data.val_split=null", "--dry-run", cwd=work)
                     .strip().splitlines()[1])

    predictions = work / "predict"
    _cli("predict", "--checkpoint", str(run), "--input", str(data / "val"), "--output",
         str(predictions), "--batch-size", "2", cwd=work)
    for path in sorted(predictions.rglob("*")):
        if path.is_file():
            files[f"predict/{path.relative_to(predictions)}"] = _sha256(path)

    api = json.loads(_python("-c", PREDICT_API, str(run), str(data / "val"), cwd=work))

    evaluation = work / "evaluate"
    _cli("evaluate", "--checkpoint", str(run), "--data", str(data), "--split", "val",
         "--output", str(evaluation), cwd=work)
    for name in ("metrics.json", "per_class.csv"):
        files[f"evaluate/{name}"] = _sha256(evaluation / name)

    maps = work / "visualize"
    image = sorted((data / "val").iterdir())[0]
    _cli("visualize", "--checkpoint", str(run), "--image", str(image), "--size", "40",
         "--max-slots", "2", "--out", str(maps), cwd=work)
    for path in sorted(maps.rglob("*")):
        if path.is_file():
            files[f"visualize/{path.relative_to(maps)}"] = _sha256(path)

    return {
        "fingerprint": fingerprint(),
        "scalars": scalars,
        "files": files,
        "resumed_scalars": resumed_scalars,
        "resumed_files": resumed_files,
        "dry_run_loss": dry["loss"],
        "predictor_api": api,
    }


def test_training_and_its_outputs_are_bit_identical(tmp_path):
    expected = json.loads(FIXTURE.read_text())
    if expected["fingerprint"] != fingerprint():
        pytest.skip(f"recorded on {expected['fingerprint']}, this is {fingerprint()}: "
                    "bits differ across CPUs and versions (record anew: see the module notes)")
    got = record(tmp_path)
    # Scalars first: a differing step says where a change begins.
    assert sorted(got["scalars"]) == sorted(expected["scalars"])
    for tag, values in expected["scalars"].items():
        assert got["scalars"][tag] == values, tag
    assert got["resumed_scalars"] == {tag: [v for v in values if v[0] > 3]
                                      for tag, values in expected["scalars"].items()}
    assert got["resumed_files"] == {
        "model.safetensors": expected["files"]["run/model.safetensors"],
        "state.safetensors": expected["files"]["run/checkpoints/step_0000006/state.safetensors"],
        "state.json": expected["files"]["run/checkpoints/step_0000006/state.json"],
    }
    assert got["dry_run_loss"] == expected["dry_run_loss"]
    assert got["predictor_api"] == expected["predictor_api"]
    differ = {name: digest for name, digest in got["files"].items()
              if expected["files"].get(name) != digest}
    assert sorted(got["files"]) == sorted(expected["files"])
    assert not differ, f"files differ: {sorted(differ)}"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        values = record(Path(work))
    FIXTURE.parent.mkdir(exist_ok=True)
    # One line per scalar tag and file: a readable diff when the fixture is recorded anew.
    def block(value: Any) -> str:
        if not isinstance(value, dict):
            return json.dumps(value)
        return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}"
                                   for k, v in value.items()) + "\n }"

    FIXTURE.write_text("{\n" + ",\n".join(f" {json.dumps(key)}: {block(value)}"
                                           for key, value in values.items()) + "\n}\n")
    print(f"wrote {FIXTURE}: {len(values['scalars'])} scalar tags, {len(values['files'])} files")
