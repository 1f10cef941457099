"""Training benchmark on CPU: cmt-deeplab-tiny on the synthetic set, PQ within a fixed budget.

The ``tiny`` preset is the project's own benchmark (``configs/synthetic_cmt_deeplab_tiny.yaml``):
96x96 synthetic images (``cmt-deeplab synth``), a budget of 13,500 training images
(1,687 steps x 8 at a 96x96 crop), PQ on 250 held-out images. The script writes the data
once into ``--work`` (reused by later runs), trains, evaluates and prints one JSON line with
the PQ and the wall time.

    nice .venv/bin/python benchmarks/train_cpu.py --work /tmp/bench_tiny
    .venv/bin/python benchmarks/train_cpu.py --work /tmp/bench_tiny --steps 50   # smoke run

Extra ``--set key=value`` arguments reach the config, as with ``cmt-deeplab train``.

``--speed`` instead times training steps (images/s of the tiny preset; CMT-DeepLab-S against
HF Mask2Former-R50 per MAC at 512x512), see ``_train_speed.py``:

    .venv/bin/python benchmarks/train_cpu.py --speed [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.config import load_train_config
from cmt_deeplab.engine.evaluate import evaluate_model
from cmt_deeplab.engine.trainer import Trainer

PRESETS = {
    "tiny": {"config": "synthetic_cmt_deeplab_tiny", "train_images": 13_500, "val_images": 250,
             "size": 96, "seed": 0},
}


def _data(root: Path, split: str, count: int, size: int, seed: int, workers: int) -> None:
    """Writes the split unless a complete copy (its JSON, written last) is already there."""
    annotations = root / "annotations" / f"panoptic_{split}.json"
    if annotations.is_file() and len(json.loads(annotations.read_text())["images"]) == count:
        return
    start = time.perf_counter()
    generate_synthetic_dataset(root, split, num_images=count, size=size, seed=seed,
                               workers=workers)
    print(f"wrote {count} {split} images in {time.perf_counter() - start:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--speed", action="store_true",
                        help="time training steps instead (no --work needed)")
    parser.add_argument("--threads", type=int, default=2, help="--speed: torch threads")
    parser.add_argument("--rounds", type=int, default=3, help="--speed: timed rounds")
    parser.add_argument("--no-peers", action="store_true", help="--speed: skip Mask2Former")
    parser.add_argument("--work", type=Path,
                        help="folder for the data (kept) and the run (replaced)")
    parser.add_argument("--steps", type=int, help="override the preset's steps")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes that render the synthetic images")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    if args.speed:
        from _train_speed import run

        run(args.threads, args.rounds, (4, 8), 512, not args.no_peers)
        return
    if args.work is None:
        parser.error("--work is required (or --speed)")

    preset = PRESETS[args.preset]
    data_root = args.work / "data"
    _data(data_root, "train", preset["train_images"], preset["size"], preset["seed"],
          args.workers)
    _data(data_root, "val", preset["val_images"], preset["size"], preset["seed"], args.workers)

    values = {"data.root": str(data_root)}
    if args.steps is not None:
        values["run.steps"] = args.steps
    config = load_train_config(preset["config"], args.overrides, values)
    out = args.work / "run"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    trainer = Trainer(config, out, progress=not args.no_progress)
    start = time.perf_counter()
    summary = trainer.train()
    train_seconds = time.perf_counter() - start

    # The final score on every held-out image (the periodic evaluations may use fewer).
    start = time.perf_counter()
    ev = config.evaluation
    result = evaluate_model(trainer.model, config.data.open("val"), config.eval_size,
                            trainer.device, ev.method, 0, ev.batch_size,
                            class_threshold=ev.class_threshold,
                            pixel_threshold=ev.pixel_threshold)
    report = {
        "preset": args.preset,
        "model": config.model.name,
        "steps": summary["steps"],
        "batch_size": config.run.batch_size,
        "images_seen": summary["steps"] * config.run.batch_size,
        "crop": config.input.crop,
        "train_wall_seconds": round(train_seconds, 1),
        "seconds_per_step": round(summary["seconds_per_step"], 3),
        "eval_wall_seconds": round(time.perf_counter() - start, 1),
        "val_images": result["num_images"],
        "pq": round(100 * result["All"]["pq"], 2),
        "sq": round(100 * result["All"]["sq"], 2),
        "rq": round(100 * result["All"]["rq"], 2),
        "pq_things": round(100 * result["Things"]["pq"], 2),
        "pq_stuff": round(100 * result["Stuff"]["pq"], 2),
        "miou": round(100 * result["miou"], 2),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "overrides": args.overrides,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
