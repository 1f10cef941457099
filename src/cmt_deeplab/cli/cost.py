"""``cmt-deeplab cost``: parameters, GMACs, latency / FPS and peak memory per model."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmt_deeplab.cli.main import UserError
from cmt_deeplab.cost import BACKENDS, PAPER_TABLE2, Backend, measure_cost, measure_training_memory
from cmt_deeplab.data.metadata import Category, DatasetInfo
from cmt_deeplab.export import OnnxRuntimeModel, export_model, onnxruntime_available
from cmt_deeplab.models import RECOMPUTE_MODES, list_models, model_spec
from cmt_deeplab.utils.size import parse_size

JSON_KEYS = ("model", "params", "params_paper", "gmacs", "fps", "latency_s", "peak_mem_bytes",
             "train_mem_bytes", "train_mem_kind", "train_crop", "train_recompute", "backend_fps")


def onnxruntime_backend(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    """The model exported to ONNX (a temporary file, at the input's size) run by onnxruntime's
    CPU provider with torch's thread count. Exporting a full-size model takes minutes."""
    spec = model_spec(model).kwargs
    info = DatasetInfo([Category(index + 1, f"class{index}", index < spec["num_thing_classes"])
                        for index in range(spec["num_classes"])])
    folder = tempfile.TemporaryDirectory(prefix="cmt-deeplab-cost-")
    model_file = Path(folder.name) / "model.onnx"
    export_model(model, model_file, size=tuple(images.shape[-2:]), info=info)
    runtime = OnnxRuntimeModel(model_file, num_threads=torch.get_num_threads())
    images = images.cpu().contiguous()

    def call(folder: tempfile.TemporaryDirectory = folder) -> Any:  # keeps the file alive
        return runtime(images)
    return call


#: ``--backends`` choices besides eager (always timed).
EXTRA_BACKENDS: dict[str, Backend] = {**BACKENDS, "onnxruntime": onnxruntime_backend}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cost", help="params, GMACs, latency/FPS and peak memory (the paper's Table 2)"
    )
    parser.add_argument("--models", default="max-deeplab-s,cmt-deeplab-s",
                        help="comma-separated model names (see `cmt-deeplab models`)")
    parser.add_argument("--size", default="800x1200", help="input HxW (paper: 800x1200)")
    parser.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    parser.add_argument("--markdown", action="store_const", const="markdown", dest="format",
                        help="Markdown table with the paper's Table 2 figures beside ours")
    parser.add_argument("--train-crop", metavar="HxW", default=None,
                        help="also measure training memory per image at this crop "
                             "(one step: forward, losses, backward), beside the paper's")
    parser.add_argument("--recompute", choices=RECOMPUTE_MODES, default="none",
                        help="with --train-crop: the model.recompute mode of that step")
    parser.add_argument("--train-batch", type=int, default=1, metavar="B",
                        help="with --train-crop: images in that step (memory is per image)")
    parser.add_argument("--no-timing", action="store_true", help="counts only (no forward)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards (median)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for timing")
    parser.add_argument("--backends", default="eager", metavar="LIST",
                        help="comma-separated, each timed in its own process on the CPU: eager "
                             "(always: the model as built), inference (predict's float32 "
                             "path: the BN-folded copy without training-only outputs), bf16 "
                             "(the bf16 inference path of predict --precision bf16), "
                             "onnxruntime (an ONNX export run by onnxruntime: exporting takes "
                             "minutes at full size; skipped with a note where onnxruntime is "
                             "not installed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    height, width = parse_size(args.size, "--size")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    valid = list_models()
    for name in names:
        if name not in valid:
            raise UserError(f"unknown model {name!r}; valid names: {', '.join(valid)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_crop = parse_size(args.train_crop, "--train-crop") if args.train_crop else None
    backends, skipped = _backends(args.backends, device, args.no_timing)
    rows = []
    for index, name in enumerate(names, start=1):
        start = time.perf_counter()
        what = "counting" if args.no_timing else f"counting, timing {args.repeats} forward(s)"
        print(f"cost: [{index}/{len(names)}] {name}: {what}"
              + (f", a training step at {train_crop[0]}x{train_crop[1]}" if train_crop else "")
              + " ...", file=sys.stderr, flush=True)
        row = measure_cost(name, height, width, timing=not args.no_timing, device=device,
                           repeats=args.repeats, backends=backends)
        if train_crop is not None:
            row.train_crop, row.train_recompute = train_crop, args.recompute
            try:
                row.train_mem_bytes, row.train_mem_kind = measure_training_memory(
                    name, train_crop, device, args.train_batch, args.recompute)
            except MemoryError as error:  # the others are still worth printing
                row.train_mem_kind = f"did not fit: {error}"
        rows.append(row)
        print(f"cost: [{index}/{len(names)}] {name}: done in {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
    print(format_rows(rows, args.format))
    for note in skipped:
        print(note, file=sys.stderr)
    return 0


def _backends(text: str, device: str, no_timing: bool) -> tuple[dict[str, Backend], list[str]]:
    """``--backends`` -> (the extra backends to time, notes on those skipped)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - {"eager", *EXTRA_BACKENDS})
    if unknown:
        raise UserError(f"unknown --backends {', '.join(unknown)}; choose from eager, "
                        f"{', '.join(EXTRA_BACKENDS)}")
    names = [n for n in dict.fromkeys(names) if n != "eager"]
    if names and no_timing:
        raise UserError("--backends times forwards: drop --no-timing")
    skipped = []
    if "onnxruntime" in names and not onnxruntime_available():
        names.remove("onnxruntime")
        skipped.append("cost: the onnxruntime column is left out: onnxruntime is not installed "
                       "(pip install 'cmt-deeplab[export]')")
    if "onnxruntime" in names and torch.device(device).type != "cpu":
        names.remove("onnxruntime")
        skipped.append(f"cost: the onnxruntime column is left out: it runs on the CPU, the "
                       f"timing device is {device}")
    return {n: EXTRA_BACKENDS[n] for n in names}, skipped


def format_rows(rows: list, fmt: str) -> str:
    dicts = [r.to_dict() for r in rows]
    if fmt == "json":
        return json.dumps([{k: d[k] for k in JSON_KEYS} | {"size": [d["height"], d["width"]],
                           "device": d["device"], "peak_mem_kind": d["peak_mem_kind"],
                           "paper_table2": PAPER_TABLE2.get(d["model"])} for d in dicts],
                          indent=2)
    if fmt == "markdown":
        return format_markdown(dicts)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(dicts[0]))
        writer.writeheader()
        writer.writerows(dicts)
        return buffer.getvalue().rstrip()
    training = any(d["train_crop"] for d in dicts)
    extra = list(dict.fromkeys(k for d in dicts for k in d["backend_fps"]))
    header = ("model", "size", "params", "params + aux head", "paper params", "GMACs",
              "paper GMACs", "latency s", "FPS", "peak mem")
    header += tuple(f"{label} FPS" for label in extra)
    header += ("train mem / image", "paper train mem") if training else ()
    table = [header]
    for d in dicts:
        timed = d["latency_s"] is not None
        paper = PAPER_TABLE2.get(d["model"], {})
        table.append((
            d["model"], f"{d['height']}x{d['width']}", f"{d['params_paper']:,}",
            f"{d['params']:,}", paper.get("params", "-"), f"{d['gmacs']:.1f}",
            str(paper.get("gflops", "-")), f"{d['latency_s']:.3f}" if timed else "-",
            f"{d['fps']:.2f}" if timed else "-",
            f"{d['peak_mem_bytes'] / 2**20:.0f} MiB" if timed else "-",
        ) + tuple(_backend_fps(d, label) for label in extra)
          + ((_train_memory(d), paper.get("memory", "-")) if training else ()))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in table]
    lines.append("params: ours without the training-only auxiliary semantic head (the paper's "
                 "and deeplab2's convention); params + aux head: with it; paper params, "
                 "paper GMACs: the paper's Table 2 (its 'FLOPs' are multiply-accumulates, "
                 "at 1200x800)")
    if dicts and dicts[0]["device"]:
        lines.append(f"device: {dicts[0]['device']}; peak mem = {dicts[0]['peak_mem_kind']} of "
                     "the first forward of the model, in a fresh process on the CPU")
    lines.append("GMACs: multiply-accumulates, torch FlopCounterMode / 2, on the meta device")
    if extra:
        lines.append(BACKEND_NOTE)
    if training:
        lines += _training_notes(dicts)
    return "\n".join(lines)


BACKEND_NOTE = ("FPS: the model as built (eager fp32); inference FPS: predict's float32 path "
                "(BN-folded channels-last copy, no training-only outputs); bf16 FPS: the bf16 "
                "inference path (BN-folded channels-last copy, conv / linear weights in bf16, "
                "autocast); onnxruntime FPS: its ONNX export on onnxruntime's CPU provider; "
                "batch 1; on the CPU each in a fresh process, with glibc keeping freed memory "
                "as predict does")


def _backend_fps(row: dict, label: str) -> str:
    value = row["backend_fps"].get(label)
    return f"{value:.2f}" if value is not None else "-"


def _train_memory(row: dict) -> str:
    if not row["train_mem_bytes"]:
        return "did not fit" if row["train_mem_kind"] else "-"
    return f"{row['train_mem_bytes'] / 2**30:.2f} GiB"


def _training_notes(rows: list[dict]) -> list[str]:
    """What the training-memory columns hold; the reason of each step that did not fit."""
    crop = next(d["train_crop"] for d in rows if d["train_crop"])
    kind = next((d["train_mem_kind"] for d in rows if d["train_mem_bytes"]), None)
    notes = [f"train mem: one training step (forward, losses, backward; recompute "
             f"{rows[0]['train_recompute']}) at crop {crop[0]}x{crop[1]}, per image"
             + (f", {kind}" if kind else "")
             + "; paper: TPUv4, 1200x800, batch 1 (Table 2)"]
    notes += [f"{d['model']}: {d['train_mem_kind']}" for d in rows
              if d["train_crop"] and not d["train_mem_bytes"] and d["train_mem_kind"]]
    return notes


def format_markdown(rows: list[dict]) -> str:
    """Ours beside the paper's Table 2 (V100 FPS, TPUv4 training memory, 1200x800)."""
    extra = list(dict.fromkeys(k for d in rows for k in d["backend_fps"]))
    lines = [
        "| model | size | params (paper convention) | paper params | GMACs | paper GMACs "
        "('GFLOPs') | FPS | " + "".join(f"{label} FPS | " for label in extra)
        + "paper FPS | train mem / image | paper train mem |",
        "|---|---|---|---|---|---|---|" + "---|" * len(extra) + "---|---|---|",
    ]
    for d in rows:
        paper = PAPER_TABLE2.get(d["model"], {})
        fps = f"{d['fps']:.2f}" if d["fps"] is not None else "-"
        memory = (f"{d['train_mem_bytes'] / 2**30:.2f} GiB ({d['train_mem_kind']}, crop "
                  f"{d['train_crop'][0]}x{d['train_crop'][1]}, recompute "
                  f"{d['train_recompute']})" if d["train_mem_bytes"] else _train_memory(d))
        lines.append(
            f"| {d['model']} | {d['height']}x{d['width']} | {d['params_paper'] / 1e6:.1f}M | "
            f"{paper.get('params', '-')} | {d['gmacs']:.1f} | {paper.get('gflops', '-')} | {fps} | "
            + "".join(f"{_backend_fps(d, label)} | " for label in extra)
            + f"{paper.get('fps', '-')} | {memory} | {paper.get('memory', '-')} |"
        )
    device = next((d["device"] for d in rows if d["device"]), None)
    if device:
        lines.append(f"\nOurs measured on {device}; the paper's FPS on a V100 (TF 2.7), its "
                     "training memory on a TPUv4.")
    if extra:
        lines.append(f"\n{BACKEND_NOTE}.")
    return "\n".join(lines)
