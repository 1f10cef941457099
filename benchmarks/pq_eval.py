"""PQ evaluation speed: cityscapesscripts' panopticapi port against ours, same files, same run.

Generates random COCO-format GT / prediction pairs (deterministic seed) in a temporary
folder, times ``evaluatePanoptic`` (which uses one process per CPU) and
``cmt_deeplab.evaluation.pq_compute`` (``--workers`` processes) alternately, checks that the
results are equal and prints both times and their ratio.

    .venv/bin/python benchmarks/pq_eval.py [--num-images 500] [--workers 2] [--repeats 3]
        [--pillow-reader]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cmt_deeplab.data import panoptic_png
from cmt_deeplab.evaluation import pq_compute
from cmt_deeplab.evaluation.random_pairs import write_random_dataset


def _reference(paths: dict[str, Path], results_file: Path) -> dict:
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    with contextlib.redirect_stdout(io.StringIO()):  # it prints per-core progress
        return evaluatePanoptic(str(paths["gt_json"]), str(paths["gt_dir"]),
                                str(paths["pred_json"]), str(paths["pred_dir"]), str(results_file))


def _cpu_seconds_per_image(paths: dict[str, Path]) -> tuple[float, float]:
    """Single-process CPU time per image of both, less sensitive to a busy machine."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import (
        pq_compute_single_core,
    )

    gt_json = json.loads(paths["gt_json"].read_text())
    pred_json = json.loads(paths["pred_json"].read_text())
    categories = {c["id"]: c for c in gt_json["categories"]}
    pairs = list(zip(gt_json["annotations"], pred_json["annotations"], strict=True))
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        pq_compute_single_core(0, pairs, str(paths["gt_dir"]), str(paths["pred_dir"]), categories)
    reference = (time.process_time() - start) / len(pairs)
    start = time.process_time()
    pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_dir"], paths["pred_dir"],
               num_workers=0)
    return reference, (time.process_time() - start) / len(pairs)


def _png_reader(pillow_reader: bool) -> str:
    """Which decoder ``read_panoptic_rgbx`` uses for 8-bit PNGs, with its version."""
    pyspng = panoptic_png._pyspng
    if pyspng is None:
        return "Pillow (--pillow-reader)" if pillow_reader else "Pillow (pyspng is not installed)"
    return f"libspng {pyspng.lib.c.spng_version_string()} (pyspng {pyspng.__version__})"


def _max_difference(ours: dict, reference: dict) -> float:
    difference = 0.0
    for group in ("All", "Things", "Stuff"):
        if ours[group]["n"] != reference[group]["n"]:
            return float("inf")
        difference = max(difference, *(abs(ours[group][k] - reference[group][k])
                                        for k in ("pq", "sq", "rq")))
    for category_id, theirs in reference["per_class"].items():
        difference = max(difference, *(abs(ours["per_class"][category_id][k] - theirs[k])
                                       for k in ("pq", "sq", "rq")))
    return difference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=500)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pillow-reader", action="store_true",
                        help="read our PNGs with Pillow, as without pyspng (needs the fork start "
                             "method, so that the workers inherit the switch)")
    args = parser.parse_args(argv)
    if args.pillow_reader:
        if multiprocessing.get_start_method() != "fork":
            parser.error("--pillow-reader needs the 'fork' multiprocessing start method")
        panoptic_png._pyspng = None

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
          f"on {multiprocessing.cpu_count()} CPUs (cityscapesscripts uses one process each)")
    print(f"our PNG reader: {_png_reader(args.pillow_reader)}; cityscapesscripts reads with Pillow")
    with tempfile.TemporaryDirectory(prefix="pq_eval_") as folder:
        start = time.perf_counter()
        paths = write_random_dataset(folder, args.num_images, args.height, args.width,
                                     seed=args.seed)
        print(f"generated {args.num_images} {args.width}x{args.height} pairs in "
              f"{time.perf_counter() - start:.1f} s")
        times: dict[str, list[float]] = {"cityscapesscripts": [], "ours": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            reference = _reference(paths, Path(folder) / "reference.json")
            times["cityscapesscripts"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours = pq_compute(paths["gt_json"], paths["pred_json"], paths["gt_dir"],
                              paths["pred_dir"], num_workers=args.workers)
            times["ours"].append(time.perf_counter() - start)
        cpu_reference, cpu_ours = _cpu_seconds_per_image(paths)

    difference = _max_difference(ours, reference)
    print(f"PQ {100 * ours['All']['pq']:.3f}  SQ {100 * ours['All']['sq']:.3f}  "
          f"RQ {100 * ours['All']['rq']:.3f}  max |ours - reference| = {difference:.2e}")
    for name, values in times.items():
        print(f"{name:18s} best {min(values):6.2f} s  median {statistics.median(values):6.2f} s"
              f"  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"speed-up (best / median): {min(times['cityscapesscripts']) / min(times['ours']):.2f}x"
          f" / {statistics.median(times['cityscapesscripts']) / statistics.median(times['ours']):.2f}x")
    print(f"single-process CPU per image: cityscapesscripts {1000 * cpu_reference:.2f} ms, "
          f"ours {1000 * cpu_ours:.2f} ms, ratio {cpu_reference / cpu_ours:.2f}x")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if difference > 1e-9:
        print("RESULTS DIFFER", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
