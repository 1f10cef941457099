"""``cmt-deeplab evaluate``: predict a split and score it (PQ / SQ / RQ, mIoU)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cmt_deeplab.cli.common import (
    add_speed_arguments,
    keep_freed_memory_on_cpu,
    load_model,
    parse_device,
)
from cmt_deeplab.cli.main import UserError
from cmt_deeplab.data.arguments import add_data_arguments, dataset_from_args
from cmt_deeplab.utils.device import resolve_device
from cmt_deeplab.utils.size import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="panoptic quality of a model on a dataset split")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR", help="trained model directory")
    source.add_argument("--model", metavar="NAME", help="registered model with random weights")
    add_data_arguments(parser)
    parser.add_argument("--output", metavar="DIR", help="writes metrics.json and per_class.csv")
    parser.add_argument("--size", metavar="S|HxW", help="canvas (default: the checkpoint's)")
    parser.add_argument("--method", choices=("pixelwise", "maskwise"), default="pixelwise")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-images", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_speed_arguments(parser)
    parser.set_defaults(func=run, categories=None)


def run(args: argparse.Namespace) -> int:
    from cmt_deeplab.engine.evaluate import evaluate_model
    from cmt_deeplab.evaluation import format_pq_table, write_per_class_csv
    from cmt_deeplab.utils.io import atomic_write_json, check_output_dir

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_images < 0:
        raise UserError(f"--max-images must be 0 (all) or more, got {args.max_images}")
    if args.output:
        check_output_dir(args.output, "--output")
    dataset = dataset_from_args(args, skip_bad=args.skip_bad)
    device = parse_device(args.device)
    model, info, default_size = load_model(args, device)
    if [c.id for c in info.categories] != [c.id for c in dataset.info.categories]:
        if args.checkpoint:
            raise UserError("the checkpoint's categories differ from the dataset's; evaluate on "
                            "data with the categories the model was trained on")
        model, info = _rebuild_for(args.model, dataset.info), dataset.info
    size = parse_size(args.size, "--size") if args.size else default_size
    keep_freed_memory_on_cpu(device or resolve_device("auto"))
    result = evaluate_model(model, dataset, size, device=device, method=args.method,
                            max_images=args.max_images, batch_size=args.batch_size, progress=True,
                            precision=args.precision, compile=args.compile)
    for entry in result["skipped"]:
        print(f"skipped {entry['file']}: {entry['error']}")
    if result["num_images"] == 0:
        # Every image was skipped: a PQ of 0 would only replace an earlier metrics.json.
        raise UserError(f"no image of {dataset.annotations_json} could be evaluated "
                        f"({len(result['skipped'])} skipped); nothing written")
    print(format_pq_table(result))
    print(f"images: {result['num_images']}")
    if args.output:
        out = Path(args.output)
        metrics = {key: result[key] for key in ("All", "Things", "Stuff", "per_class", "miou",
                                                "num_images", "skipped")}
        metrics["per_class"] = {str(k): v for k, v in metrics["per_class"].items()}
        atomic_write_json(out / "metrics.json", metrics, indent=2)
        write_per_class_csv(out / "per_class.csv", result, info)
        print(f"wrote {out / 'metrics.json'} and {out / 'per_class.csv'}")
    return 0


def _rebuild_for(name: str, info):
    from cmt_deeplab.models.registry import build_model

    return build_model(name, num_classes=info.num_classes, num_thing_classes=info.num_thing_classes)
