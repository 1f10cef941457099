"""``cmt-deeplab export``: a model directory -> an ONNX file or a ``torch.export`` program.

    cmt-deeplab export --checkpoint runs/cmt_s --format onnx --out cmt_s.onnx [--size 641]
        [--dynamic-batch] [--dynamic-size] [--with-post-processing]

Writes ``FILE`` and ``FILE.json`` (the sidecar: model, categories, input normalisation and the
shapes the graph accepts). ``predict --backend onnxruntime --model-file FILE`` runs it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cmt_deeplab.cli.main import UserError
from cmt_deeplab.export.exporter import FORMATS, export_model
from cmt_deeplab.export.sidecar import sidecar_path
from cmt_deeplab.utils.io import check_output_dir
from cmt_deeplab.utils.size import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or torch.export (+ a sidecar JSON)",
        description="Exports a model directory to an ONNX file or a torch.export program, "
                    "BNs folded, with a sidecar JSON FILE.json beside it.",
    )
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="model directory (model.safetensors + config.yaml)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx (run by onnxruntime) or torch-export (torch.export.save)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--size", metavar="S|HxW",
                        help="input size of the graph (default: the checkpoint's canvas)")
    parser.add_argument("--dynamic-batch", action="store_true", help="accept any batch size")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="accept any height and width 32k+1 up to 2049 (--size must be one)")
    parser.add_argument("--with-post-processing", action="store_true",
                        help="end the graph in the pixel-wise panoptic map and slot table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {args.checkpoint}")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name (e.g. model.onnx)")
    check_output_dir(out.parent, f"--out {out}: its folder")  # before minutes of exporting
    size = parse_size(args.size, "--size") if args.size else None
    if args.format == "onnx":
        _require_onnx()
    start = time.monotonic()
    sidecar = export_model(
        args.checkpoint, out, format=args.format, size=size, dynamic_batch=args.dynamic_batch,
        dynamic_size=args.dynamic_size, post_processing=args.with_post_processing,
    )
    print(f"exported {sidecar.model['name']} ({args.format}, {sidecar.describe_shapes()}) "
          f"in {time.monotonic() - start:.0f} s -> {out} (+ {sidecar_path(out).name})")
    return 0


def _require_onnx() -> None:
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: "
                        "pip install 'cmt-deeplab[export]'")
