"""``cmt-deeplab demo``: the README's first command (see ``cmt_deeplab.demo.pipeline``)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic data -> train cmt-deeplab-tiny -> PQ -> predictions -> maps -> report.html",
        description="Runs the whole library on a fresh machine with no downloads and writes one "
                    "self-contained report.html. Interrupt it at any time; running it again "
                    "resumes (finished steps are reused).",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--images", nargs="*", default=[], metavar="FILE",
                        help="your own images to segment as well")
    parser.add_argument("--quick", action="store_true", help="a small variant (< 2 minutes)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time budget (default 10, quick 0.75)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmt_deeplab.demo.pipeline import run_demo
    from cmt_deeplab.utils.io import check_output_dir

    check_output_dir(args.out, "--out")
    if args.minutes is not None and not 0 < args.minutes < float("inf"):
        raise ValueError(f"--minutes must be a positive number, got {args.minutes}")
    limit = None if args.minutes is None else 60.0 * args.minutes
    report = run_demo(args.out, quick=args.quick, images=args.images, seed=args.seed,
                      progress=not args.no_progress, time_limit_s=limit)
    print(f"report: {report.resolve()}")
    return 0
