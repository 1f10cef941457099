"""``cmt-deeplab synth``: write a synthetic panoptic dataset in COCO layout."""

from __future__ import annotations

import argparse
import os
import time

from cmt_deeplab.data.synthetic import (
    MORE_SYNTHETIC_CATEGORIES,
    SYNTHETIC_CATEGORIES,
    generate_synthetic_dataset,
)
from cmt_deeplab.utils.io import check_output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic panoptic dataset (shapes on textures) in COCO layout",
        description="Writes ROOT/NAME/*.png, ROOT/annotations/panoptic_NAME.json and "
                    "ROOT/annotations/panoptic_NAME/*.png. The same arguments give "
                    "byte-identical files.",
    )
    parser.add_argument("--out", required=True, metavar="ROOT", help="dataset root to write")
    parser.add_argument("--split", default="train", metavar="NAME", help="split name (train)")
    parser.add_argument("--num", type=int, default=100, metavar="N", help="number of images")
    parser.add_argument("--size", type=int, default=96, metavar="S", help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, metavar="K")
    parser.add_argument("--categories", nargs="+", metavar="NAME",
                        choices=[c.name for c in (*SYNTHETIC_CATEGORIES,
                                                  *MORE_SYNTHETIC_CATEGORIES)],
                        help="classes to draw (default: "
                             f"{' '.join(c.name for c in SYNTHETIC_CATEGORIES)}; more on "
                             f"request: {' '.join(c.name for c in MORE_SYNTHETIC_CATEGORIES)})")
    parser.add_argument("--crowd", nargs="?", type=float, const=0.2, default=0.0, metavar="P",
                        help="add a crowd region to a fraction P of the images (0.2 if no P)")
    parser.add_argument("--image-format", choices=("png", "jpg"), default="png")
    parser.add_argument("--workers", type=int, default=min(4, _usable_cpus()),
                        help="rendering processes (default: min(4, usable CPUs))")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "--out")
    for flag, ok, rule, value in (("--num", args.num >= 1, "at least 1", args.num),
                                  ("--size", args.size >= 16, "at least 16", args.size),
                                  ("--workers", args.workers >= 1, "at least 1", args.workers),
                                  ("--crowd", 0.0 <= args.crowd <= 1.0, "in [0, 1]", args.crowd)):
        if not ok:
            raise ValueError(f"{flag} must be {rule}, got {value}")
    start = time.perf_counter()
    paths = generate_synthetic_dataset(
        args.out, split=args.split, num_images=args.num, size=args.size, seed=args.seed,
        categories=args.categories, image_format=args.image_format, crowd_prob=args.crowd,
        workers=args.workers,
    )
    print(f"wrote {args.num} images of {args.size}x{args.size} in "
          f"{time.perf_counter() - start:.1f}s:\n  images      {paths.images_dir}\n"
          f"  annotations {paths.annotations_json}\n  panoptic    {paths.panoptic_dir}")
    return 0


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU limits
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
