"""``cmt-deeplab data check``: verify a panoptic dataset split and summarise it."""

from __future__ import annotations

import argparse

from cmt_deeplab.data.arguments import add_data_arguments, dataset_from_args
from cmt_deeplab.data.check import check_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="dataset tools (check)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    check = actions.add_parser(
        "check",
        help="verify a COCO-format panoptic split: ids, areas, boxes, sizes, files",
        description="Checks every image of a split and prints a summary and each problem with "
                    "its file; exits with status 1 when it finds a problem.",
    )
    add_data_arguments(check)
    check.add_argument("--quick", action="store_true",
                       help="read image headers only instead of decoding every image")
    check.add_argument("--max-problems", type=int, default=200, metavar="N",
                       help="print at most N problems (all are counted)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    if args.max_problems < 0:
        raise ValueError(f"--max-problems must be 0 or more, got {args.max_problems}")
    dataset = dataset_from_args(args, skip_bad=False)
    report = check_dataset(dataset, decode_images=not args.quick, progress=True)
    for path, message in report.problems[: args.max_problems]:
        print(f"PROBLEM {path}: {message}")
    if len(report.problems) > args.max_problems:
        print(f"... {len(report.problems) - args.max_problems} more problems not shown")
    print(report.summary())
    return 0 if report.ok else 1
