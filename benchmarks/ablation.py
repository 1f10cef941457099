"""The paper-style ablation of the CMT layer on the synthetic benchmark.

Trains ``cmt-deeplab-tiny`` with each part of the Clustering Mask Transformer layer switched
off in turn, at the same budget as ``train_cpu.py`` (13,500 images), for several seeds, and
prints PQ mean +- std per variant:

    nice .venv/bin/python benchmarks/ablation.py --work /tmp/ablation [--seeds 0,1,2]
    .venv/bin/python benchmarks/ablation.py --work /tmp/ablation --steps 20 --seeds 0  # smoke

Each variant x seed is one full training run (about as long as ``train_cpu.py``); results
are kept in ``--results`` (default ``WORK/results.json``) and reused, so an interrupted ablation
resumes; ``benchmarks/results/ablation.json`` is the committed record behind the README table
(``--results benchmarks/results/ablation.json`` adds to it). ``--jobs 2``
trains two runs at a time, one thread each: on 2 cores that is ~1.6x the throughput of one
2-thread run (a tiny-model step does not scale across threads). The full layer's seeds run
first, then the other variants seed by seed, so a cut-short ablation is still usable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import train_and_score  # noqa: E402
from train_cpu import PRESETS, _data  # noqa: E402

from cmt_deeplab.engine.config import load_train_config  # noqa: E402
from cmt_deeplab.utils.io import atomic_write_json  # noqa: E402

_ALL_OFF = {"use_clustering_update": False, "use_pixel_update": False,
            "use_residual_assignment": False, "use_reference_mask": False, "use_coord_conv": False}

VARIANTS = {
    "full CMT layer": {},
    "no pixel update": {"use_pixel_update": False},
    "no reference mask": {"use_reference_mask": False},
    "no residual assignment": {"use_residual_assignment": False},
    "MaX-style layer (all off)": _ALL_OFF,
}


def run_one(data_root: Path, out: Path, overrides: dict, seed: int, steps: int | None,
            progress: bool, threads: int = 0) -> dict:
    if threads:
        torch.set_num_threads(threads)
    values = {"data.root": str(data_root), "run.seed": seed, "run.eval_every": 0,
              "model.overrides": overrides}
    if steps is not None:
        values["run.steps"] = steps
    config = load_train_config(PRESETS["tiny"]["config"], values=values)
    start = time.perf_counter()
    _, result, _ = train_and_score(config, out, progress)
    return {"pq": 100 * result["All"]["pq"], "pq_things": 100 * result["Things"]["pq"],
            "pq_stuff": 100 * result["Stuff"]["pq"], "seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads()}


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key.split(" | steps")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--results", type=Path,
                        help="the JSON record of finished runs (default WORK/results.json)")
    parser.add_argument("--steps", type=int, help="override the budget (smoke runs)")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the names")
    parser.add_argument("--train-images", type=int, help="fewer training images (smoke runs)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--table", action="store_true",
                        help="only print the table of the runs done so far")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once, one thread each (default 1: one run, all threads)")
    args = parser.parse_args()
    preset = dict(PRESETS["tiny"])
    if args.train_images:
        preset["train_images"] = args.train_images
    data_root = args.work / "data"
    workers = min(2, os.cpu_count() or 1)
    if not args.table:
        _data(data_root, "train", preset["train_images"], preset["size"], preset["seed"], workers)
        _data(data_root, "val", preset["val_images"], preset["size"], preset["seed"], workers)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    results_path = args.results or args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    tag = (f"steps={args.steps}, {preset['train_images']} images" if args.steps
           else "full budget")
    # The first variant's seeds first (its mean and spread), then the others seed by seed.
    order = [(names[0], seed) for seed in seeds] + [(name, seed) for seed in seeds
                                                     for name in names[1:]]
    pending = [(f"{name} | seed {seed} | {tag}", name, seed) for name, seed in order]
    pending = [job for job in pending if job[0] not in results and not args.table]
    if args.jobs <= 1:
        for key, name, seed in pending:
            print(f"== {key}", flush=True)
            results[key] = run_one(data_root, args.work / "run", VARIANTS[name], seed,
                                   args.steps, not args.no_progress)
            atomic_write_json(results_path, results, indent=1)
    else:
        # Fresh interpreters (spawn): each sets its own thread count before any torch work.
        # Not a multiprocessing.Pool: its daemonic workers may not start data-loader workers.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [
                (key, pool.submit(run_one, data_root, args.work / "runs" / _slug(key),
                                  VARIANTS[name], seed, args.steps, False, 1))
                for key, name, seed in pending
            ]
            for key, future in futures:
                results[key] = future.result()
                print(f"== {key}: PQ {results[key]['pq']:.2f} "
                      f"({results[key]['seconds'] / 60:.1f} min)", flush=True)
                atomic_write_json(results_path, results, indent=1)
    print(f"\nCMT layer ablation on the synthetic benchmark ({tag}, seeds {args.seeds})")
    print(f"{'variant':28} {'PQ':>12} {'PQ things':>10} {'PQ stuff':>9} {'seeds':>6}   per seed")
    for name in names:
        runs = [results[key] for s in seeds if (key := f"{name} | seed {s} | {tag}") in results]
        if not runs:
            continue
        pq = [r["pq"] for r in runs]
        spread = statistics.stdev(pq) if len(pq) > 1 else 0.0
        print(f"{name:28} {statistics.mean(pq):6.2f} +-{spread:4.2f} "
              f"{_mean_of_known(runs, 'pq_things'):>10} {_mean_of_known(runs, 'pq_stuff'):>9} "
              f"{len(runs):6d}   ({', '.join(f'{v:.2f}' for v in pq)})")


def _mean_of_known(runs: list[dict], field: str) -> str:
    """The mean over the runs that recorded ``field`` (older records kept only the PQ)."""
    known = [r[field] for r in runs if r.get(field) is not None]
    if not known:
        return "n/a"
    return f"{statistics.mean(known):.2f}" + ("" if len(known) == len(runs) else f"[{len(known)}]")


if __name__ == "__main__":
    main()
