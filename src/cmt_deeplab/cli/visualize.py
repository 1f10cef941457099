"""``cmt-deeplab visualize``: clustering and attention maps per layer (supplementary §3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cmt_deeplab.cli.common import load_model
from cmt_deeplab.cli.main import UserError
from cmt_deeplab.utils.io import check_output_dir
from cmt_deeplab.utils.size import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize", help="clustering results and attention maps at every layer"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="trained model directory")
    source.add_argument("--model", metavar="NAME", help="registered model, random weights")
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--compare-checkpoint", metavar="DIR",
                        help="a second model (e.g. MaX-DeepLab) shown for the same objects")
    parser.add_argument("--slots", default=None,
                        help="comma-separated slot indices (default: the final segments' slots)")
    parser.add_argument("--max-slots", type=int, default=6)
    parser.add_argument("--size", default="641", help="input canvas S or HxW (paper: 641)")
    parser.add_argument("--categories", metavar="JSON", help="categories for --model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmt_deeplab.visualization.visualize import format_density, save_visualization, visualize

    check_output_dir(args.out, "--out")
    if args.max_slots < 1:
        raise UserError(f"--max-slots must be at least 1, got {args.max_slots}")
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"image not found: {args.image}")
    model, info, _ = load_model(args, None)
    compare = None
    if args.compare_checkpoint:
        compare_args = argparse.Namespace(checkpoint=args.compare_checkpoint, model=None, categories=None)
        compare, compare_info, _ = load_model(compare_args, None)
        if compare_info.num_classes != info.num_classes:
            raise UserError("the two checkpoints predict different category sets")
    slots = None
    if args.slots:
        try:
            slots = [int(s) for s in args.slots.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--slots must be comma-separated integers, got {args.slots!r}") from None
    result = visualize(model, info, args.image, parse_size(args.size, "--size"), slots, args.max_slots,
                       compare, args.device)
    written = save_visualization(result, args.out)
    print(format_density(result))
    print(f"wrote {len(written)} files to {args.out}")
    return 0
