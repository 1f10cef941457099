"""Does a pretrained start help? Fine-tuning a trained ``cmt-deeplab-tiny`` on new classes.

The source is the tiny preset trained on the synthetic benchmark (``train_cpu.py --work W``
leaves it in ``W/run``: 8 classes, circle / square / triangle / star on stripes / checker /
noise / gradient). The target task draws another class list (``FINETUNE_CLASSES``: hexagon,
cross, ring and star on dots, waves and checker: 7 classes, five of them never seen), so the
class heads are rebuilt. For each budget (a fraction of the benchmark's 13,500 training
images), seed and start (``scratch``, ``whole`` model, ``backbone`` only), the tiny preset
trains on the first images of one 3,375-image training split and is scored by PQ on 250
held-out images. Every run is recorded in ``--results`` as it ends; a rerun does only the
runs the record lacks.

    nice .venv/bin/python benchmarks/finetune_synthetic.py --work /tmp/ft \\
        --source /tmp/bench_tiny/run --results benchmarks/results/finetune_synthetic.json
    .venv/bin/python benchmarks/finetune_synthetic.py --results ... --table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from fractions import Fraction
from pathlib import Path

from _common import train_and_score

from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.config import load_train_config
from cmt_deeplab.utils.io import atomic_write_json

FINETUNE_CLASSES = ["hexagon", "cross", "ring", "star", "dots", "waves", "checker"]
#: The synthetic benchmark's budget (``train_cpu.py``): 1,687 steps x 8 images.
BENCHMARK_IMAGES, BATCH = 13_500, 8
TRAIN_IMAGES, VAL_IMAGES, SIZE = 3_375, 250, 96
STARTS = ("scratch", "whole", "backbone")


def _data(root: Path) -> None:
    for split, count, seed in (("train", TRAIN_IMAGES, 100), ("val", VAL_IMAGES, 101)):
        done = root / "annotations" / f"panoptic_{split}.json"
        if not (done.is_file() and len(json.loads(done.read_text())["images"]) == count):
            generate_synthetic_dataset(root, split, num_images=count, size=SIZE, seed=seed,
                                       categories=FINETUNE_CLASSES, workers=2)


def run_one(work: Path, source: Path, fraction: Fraction, seed: int, start: str) -> dict:
    """Trains one (budget, seed, start) and returns its record."""
    steps = round(BENCHMARK_IMAGES * fraction / BATCH)
    values = {"data.root": str(work / "data"), "data.train_split": "train",
              "data.val_split": "val", "run.steps": steps, "run.seed": seed,
              "run.save_every": 0, "run.eval_every": 0, "run.num_workers": 0}
    if start != "scratch":
        values.update({"init.checkpoint": str(source), "init.backbone_only": start == "backbone"})
    config = load_train_config("synthetic_cmt_deeplab_tiny", values=values)
    out = work / "runs" / f"{fraction.numerator}_{fraction.denominator}_{start}_s{seed}"
    began = time.perf_counter()
    _, result, _ = train_and_score(config, out)
    return {"fraction": str(fraction), "seed": seed, "start": start, "steps": steps,
            "images": steps * BATCH, "pq": round(100 * result["All"]["pq"], 2),
            "pq_things": round(100 * result["Things"]["pq"], 2),
            "pq_stuff": round(100 * result["Stuff"]["pq"], 2),
            "wall_seconds": round(time.perf_counter() - began, 1),
            "load": round(os.getloadavg()[0], 1)}


def table(records: list[dict]) -> str:
    """Markdown: PQ mean +- std (per seed) per budget and start."""
    fractions = sorted({Fraction(r["fraction"]) for r in records})
    lines = ["| budget (images) | " + " | ".join(STARTS) + " |", "|---" * (len(STARTS) + 1) + "|"]
    for fraction in fractions:
        cells = []
        for start in STARTS:
            pqs = [r["pq"] for r in sorted(records, key=lambda r: r["seed"])
                   if Fraction(r["fraction"]) == fraction and r["start"] == start]
            if not pqs:
                cells.append("-")
                continue
            spread = f" +- {statistics.stdev(pqs):.2f}" if len(pqs) > 1 else ""
            cells.append(f"**{statistics.mean(pqs):.2f}**{spread} ({', '.join(map(str, pqs))})")
        images = round(BENCHMARK_IMAGES * fraction / BATCH) * BATCH
        lines.append(f"| {fraction} ({images:,}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, help="data (kept) and runs")
    parser.add_argument("--source", type=Path, help="the trained tiny model directory")
    parser.add_argument("--results", type=Path, required=True, help="the JSON record")
    parser.add_argument("--fractions", default="1/16,1/8,1/4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--starts", default=",".join(STARTS))
    parser.add_argument("--table", action="store_true", help="print the record as a table")
    args = parser.parse_args()
    records = json.loads(args.results.read_text()) if args.results.is_file() else []
    if args.table:
        print(table(records))
        return
    if args.work is None or args.source is None:
        parser.error("--work and --source are needed to run")
    _data(args.work / "data")
    done = {(r["fraction"], r["seed"], r["start"]) for r in records}
    for fraction in map(Fraction, args.fractions.split(",")):
        for seed in map(int, args.seeds.split(",")):
            for start in args.starts.split(","):
                if (str(fraction), seed, start) in done:
                    continue
                record = run_one(args.work, args.source, fraction, seed, start)
                records.append(record)
                atomic_write_json(args.results, records)
                print(json.dumps(record), flush=True)
    print(table(records))


if __name__ == "__main__":
    main()
