"""``cmt-deeplab predict``: panoptic PNGs and a COCO panoptic results JSON for a set of images.

Output layout (``--output DIR``)::

    DIR/panoptic/<stem>.png    COCO panoptic PNG (id = R + 256 G + 256^2 B, 0 = void)
    DIR/predictions.json       {"annotations": [{"image_id", "file_name", "segments_info"}]}
    DIR/overlay/<stem>.jpg     with --overlay: colours, contours and class names
    DIR/skipped.json           with --skip-bad: the unreadable images and why

``--backend onnxruntime --model-file FILE`` runs a graph from ``cmt-deeplab export`` (network
outputs) in place of the model; the rest (resize, padding, post-processing, files) is the same.

``predictions.json`` is readable by panopticapi's ``pq_compute`` as is (with ``DIR/panoptic``
as the prediction folder). Every file is written atomically; the JSON is rewritten after a
batch (at most every 2 s) and when the run ends or is interrupted, and lists only images whose
files are complete. A re-run skips the images whose PNG exists and that the JSON lists
(``--overwrite`` redoes them).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cmt_deeplab.cli.common import (
    add_speed_arguments,
    keep_freed_memory_on_cpu,
    load_model,
    parse_device,
)
from cmt_deeplab.cli.main import UserError
from cmt_deeplab.data.image_io import load_image
from cmt_deeplab.data.panoptic_png import write_panoptic_png
from cmt_deeplab.export.runtime import BACKENDS as EXPORT_BACKENDS
from cmt_deeplab.export.runtime import load_exported
from cmt_deeplab.inference.post_processing import POST_PROCESSORS
from cmt_deeplab.inference.predictor import Predictor
from cmt_deeplab.utils.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    read_json,
)
from cmt_deeplab.utils.size import parse_size

#: ``--backend``: the model itself, or a graph from ``cmt-deeplab export``.
BACKENDS = ("torch", *EXPORT_BACKENDS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Seconds between rewrites of predictions.json during a run (always written at the end).
_SAVE_INTERVAL_S = 2.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="panoptic predictions (PNGs + COCO JSON) for images",
        description="Writes panoptic PNGs and a COCO panoptic results JSON for a set of images.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="DIR",
                        help="checkpoint directory (model.safetensors + config.yaml)")
    source.add_argument("--model", metavar="NAME",
                        help="registered model name, randomly initialised (see `models`)")
    source.add_argument("--model-file", metavar="FILE",
                        help="with --backend onnxruntime / torch-export: a graph from "
                             "`cmt-deeplab export` (its sidecar FILE.json beside it)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch (the model, default), onnxruntime (an ONNX export, CPU) or "
                             "torch-export (a torch.export program)")
    parser.add_argument("--input", required=True, metavar="FILE|DIR|GLOB",
                        help="an image, a directory of images, or a glob pattern (quote it)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--batch-size", type=int, default=1, metavar="B",
                        help="images per forward pass (default 1)")
    parser.add_argument("--size", metavar="S|HxW",
                        help="input canvas: longer side S (square) or HxW (default: the "
                             "checkpoint's evaluation size, else 641)")
    parser.add_argument("--method", choices=sorted(POST_PROCESSORS), default="pixelwise",
                        help="post-processing (default pixelwise, as CMT-DeepLab)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_speed_arguments(parser)
    parser.add_argument("--image-info", metavar="JSON",
                        help="COCO `images` list (or a JSON with one): image ids by file_name; "
                             "default: the file stem, as an int when all digits")
    parser.add_argument("--categories", metavar="JSON",
                        help="with --model: categories (COCO panoptic JSON or list); default COCO")
    parser.add_argument("--overlay", action="store_true",
                        help="also write DIR/overlay/<stem>.jpg visualisations")
    parser.add_argument("--overwrite", action="store_true",
                        help="predict every image again, even those already done")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip unreadable images (listed in DIR/skipped.json) instead of failing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.categories and not args.model:
        raise UserError("--categories applies to --model only (a checkpoint has its own)")
    _check_backend(args)
    size = parse_size(args.size, "--size") if args.size else None
    device = parse_device(args.device)
    output = check_output_dir(args.output, "--output")
    inputs = find_images(args.input)
    image_ids = _image_ids(inputs, args.image_info)

    json_path = output / "predictions.json"
    # --overwrite redoes this run's images; entries of other images from earlier runs stay.
    annotations = _read_annotations(json_path, strict=not args.overwrite)
    todo = [path for path in inputs
            if args.overwrite or not _is_done(path, output, annotations)]

    skipped: list[dict[str, str]] = []
    order = [_png_name(path) for path in inputs]

    def save() -> None:
        # Entries are added once their files are complete, so the JSON never lists a partial one.
        atomic_write_json(json_path, {"annotations": _ordered(annotations, order)})
        if args.skip_bad:
            atomic_write_json(output / "skipped.json", skipped, indent=1)

    if todo:
        predictor = _build_predictor(args, size, device)
        keep_freed_memory_on_cpu(predictor.device)
        last_save = time.monotonic()
        try:
            with tqdm(total=len(todo), unit="img", desc="predict", disable=None) as progress:
                for start in range(0, len(todo), args.batch_size):
                    batch = todo[start:start + args.batch_size]
                    _predict_batch(batch, predictor, output, annotations, image_ids, skipped, args)
                    progress.update(len(batch))
                    # Rewriting the whole JSON (MBs for COCO val) after every image would
                    # dominate fast GPU runs: at most every few seconds, and at the end.
                    if time.monotonic() - last_save >= _SAVE_INTERVAL_S:
                        save()
                        last_save = time.monotonic()
        finally:  # also on an error or Ctrl-C: what is done stays done
            save()
    else:
        save()

    done = len(todo) - len(skipped)
    print(f"predicted {done} image(s), {len(inputs) - len(todo)} already done, "
          f"{len(skipped)} skipped -> {json_path}")
    return 0


def _check_backend(args: argparse.Namespace) -> None:
    """``--backend`` and ``--model-file`` go together; the exported graph runs as it was made."""
    if args.backend == "torch":
        if args.model_file:
            raise UserError("--model-file needs --backend onnxruntime or torch-export")
        return
    if not args.model_file:
        raise UserError(f"--backend {args.backend} runs an exported graph: give --model-file "
                        "FILE (from `cmt-deeplab export`)")
    if args.precision != "fp32" or args.compile:
        raise UserError(f"--precision and --compile apply to --backend torch; an exported "
                        f"graph runs as exported (--backend {args.backend})")
    if args.device not in (None, "cpu"):
        raise UserError(f"--backend {args.backend} runs on the CPU (got --device {args.device})")


def _build_predictor(
    args: argparse.Namespace, size: tuple[int, int] | None, device: Any
) -> Predictor:
    """The Predictor of the chosen backend: the model itself, or an exported graph run by
    onnxruntime / torch.export behind the same call, so the files written are the same."""
    if args.backend == "torch":
        model, info, default_size = load_model(args, device)
        return Predictor(model, info, size=size or default_size, device=device,
                         method=args.method, batch_size=args.batch_size, inplace=True,
                         precision=args.precision, compile=args.compile)
    model = load_exported(args.model_file, num_threads=torch.get_num_threads())
    sidecar = model.sidecar
    expected = "onnx" if args.backend == "onnxruntime" else "torch-export"
    if sidecar.format != expected:
        raise UserError(f"--backend {args.backend} runs {expected} exports; "
                        f"{args.model_file} is a {sidecar.format} export")
    if sidecar.post_processing is not None:
        raise UserError(f"{args.model_file} was exported --with-post-processing (its graph "
                        "ends in a panoptic map at the input size); predict post-processes "
                        "the network outputs itself: export again without it")
    canvas = size or sidecar.size
    try:
        sidecar.check_input_shape((1, 3, *canvas), any_batch=True)
    except ValueError as error:
        raise UserError(f"--size {canvas[0]}x{canvas[1]}: {error}") from None
    return Predictor(model, sidecar.info, size=canvas, device="cpu", method=args.method,
                     batch_size=args.batch_size, optimize=False)


def _predict_batch(
    batch: list[Path],
    predictor: Predictor,
    output: Path,
    annotations: dict[str, dict[str, Any]],
    image_ids: dict[Path, int | str],
    skipped: list[dict[str, str]],
    args: argparse.Namespace,
) -> None:
    paths, arrays = [], []
    for path in batch:
        try:
            arrays.append(load_image(path))
            paths.append(path)
        except (ValueError, FileNotFoundError) as error:
            if not args.skip_bad:
                raise
            skipped.append({"file": str(path), "error": str(error)})
    for path, image, result in zip(paths, arrays, predictor.predict_arrays(arrays), strict=True):
        png_name = _png_name(path)
        write_panoptic_png(output / "panoptic" / png_name, result.panoptic)
        if args.overlay:
            from cmt_deeplab.visualization.overlay import draw_overlay

            overlay = draw_overlay(image, result.panoptic, result.segments_info, predictor.info)
            buffer = io.BytesIO()
            overlay.save(buffer, format="JPEG", quality=90)
            atomic_write_bytes(output / "overlay" / f"{path.stem}.jpg", buffer.getvalue())
        annotations[png_name] = result.to_coco(image_ids[path], png_name)


def find_images(spec: str) -> list[Path]:
    """The images named by ``--input``: one file, a directory's images, or a glob's files."""
    path = Path(spec)
    if path.is_dir():
        images = sorted(p for p in path.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in directory {path}")
    elif path.is_file():
        images = [path]
    elif glob.has_magic(spec):
        images = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not images:
            raise UserError(f"no files match {spec!r}")
    else:
        raise FileNotFoundError(f"input not found: {spec}")
    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            raise UserError(f"{by_stem[image.stem]} and {image} would both write "
                            f"{image.stem}.png; rename one")
        by_stem[image.stem] = image
    return images


def _image_ids(inputs: list[Path], image_info: str | None) -> dict[Path, int | str]:
    if image_info is None:
        return {path: int(path.stem) if path.stem.isdigit() else path.stem for path in inputs}
    info_path = Path(image_info)
    data = read_json(info_path, "image info JSON")
    records = data.get("images") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise ValueError(f"{info_path}: expected a COCO `images` list (or a JSON with one)")
    try:
        by_name = {Path(r["file_name"]).name: r["id"] for r in records}
    except (KeyError, TypeError) as error:
        raise ValueError(f"{info_path}: image records need `id` and `file_name` ({error})") from None
    missing = [path.name for path in inputs if path.name not in by_name]
    if missing:
        raise UserError(f"{len(missing)} input image(s) not listed in {info_path}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return {path: by_name[path.name] for path in inputs}


def _read_annotations(json_path: Path, strict: bool = True) -> dict[str, dict[str, Any]]:
    """Annotations of an earlier run by PNG file name; none when there was no run.

    An unreadable JSON is an error unless ``strict`` is off (``--overwrite``: start afresh).
    """
    if not json_path.exists():
        return {}
    try:
        data = json.loads(json_path.read_text())
        return {a["file_name"]: a for a in data["annotations"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        if not strict:
            return {}
        raise UserError(f"cannot resume from {json_path} ({error}); "
                        "use --overwrite to start again") from None


def _is_done(path: Path, output: Path, annotations: dict[str, dict[str, Any]]) -> bool:
    png_name = _png_name(path)
    return png_name in annotations and (output / "panoptic" / png_name).is_file()


def _ordered(annotations: dict[str, dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """This run's images in input order, then those of earlier runs not among them."""
    current = [annotations[name] for name in order if name in annotations]
    listed = set(order)
    return current + [a for name, a in annotations.items() if name not in listed]


def _png_name(path: Path) -> str:
    return f"{path.stem}.png"
