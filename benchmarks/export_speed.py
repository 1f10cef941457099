"""Exported graphs against PyTorch eager on the CPU: speed and parity, one run.

    python benchmarks/export_speed.py [--size 641] [--threads 2] [--rounds 5]
        [--models cmt-deeplab-s,max-deeplab-s] [--image path.jpg]

For each model (random weights, seed 0, COCO heads): PyTorch eager fp32 (the Predictor's
inference copy: BNs folded, channels-last, ``inference_mode``), PyTorch bf16 autocast on the
same copy, and onnxruntime fp32 (``cmt-deeplab export``'s graph, CPU provider), batch 1,
``--threads`` threads each, timed in alternating rounds (medians). Prints images/s and the
ratio to eager fp32 of the same run, and the parity of each against eager fp32 on one real
image (the first COCO sample, resized and padded as ``predict`` does): max abs difference of
class and mask logits, the share of stride-4 pixels with the same winning slot, and the share
of output pixels with the same panoptic label (pixel-wise post-processing with thresholds and
area limits at 0, so that the random models' maps are not all void). Needs the ``[export]``
extra. Export time is printed too. ``--profile`` adds, per model, the time of each operator
type in onnxruntime (its own profiler) and in PyTorch eager fp32 (``torch.profiler``), three
forwards each. ``--int8`` adds onnxruntime int8: the ONNX graph through onnxruntime's dynamic
quantization (``quantize_dynamic``, int8 weights, activations quantized per call), its parity
against eager fp32 as for the others.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternating_medians, report_load  # noqa: E402

import cmt_deeplab  # noqa: E402
from cmt_deeplab.data.image_io import load_image  # noqa: E402
from cmt_deeplab.data.metadata import coco_panoptic_info  # noqa: E402
from cmt_deeplab.export import OnnxRuntimeModel, export_model  # noqa: E402
from cmt_deeplab.export.runtime import open_onnxruntime  # noqa: E402
from cmt_deeplab.inference.post_processing import pixelwise_panoptic  # noqa: E402
from cmt_deeplab.inference.predictor import Predictor  # noqa: E402

SAMPLE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_panoptic_sample"
          / "input_images")
#: Post-processing that keeps every slot and pixel: compares the maps of random models.
LOOSE = {"class_threshold": 0.0, "pixel_threshold": 0.0, "thing_area_limit": 0,
         "stuff_area_limit": 0}


def parity(outputs: dict, reference: dict, info, size: tuple[int, int]) -> dict[str, float]:
    """Max abs differences of the logits; winning-slot and panoptic-label agreement."""
    logits_diff = float((outputs["pred_logits"].float() - reference["pred_logits"]).abs().max())
    masks_diff = float((outputs["pred_masks"].float() - reference["pred_masks"]).abs().max())
    slot = float((outputs["pred_masks"].float().argmax(1) == reference["pred_masks"].argmax(1))
                 .float().mean())
    maps = [pixelwise_panoptic(o["pred_logits"][0].float(), o["pred_masks"][0].float(), info,
                               out_size=size, **LOOSE).panoptic for o in (outputs, reference)]
    return {"logits": logits_diff, "masks": masks_diff, "slot": slot,
            "panoptic": float((maps[0] == maps[1]).mean())}


def quantized_runtime(runtime: OnnxRuntimeModel, onnx_file: Path) -> OnnxRuntimeModel:
    """``runtime`` (same sidecar and output names) on the graph after onnxruntime's dynamic
    int8 quantization; the sidecar's digest is of the fp32 graph, so the runner is swapped in."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_file = onnx_file.with_name(f"{onnx_file.stem}.int8.onnx")
    quantize_dynamic(onnx_file, int8_file, weight_type=QuantType.QInt8)
    quantized = copy.copy(runtime)
    quantized.runner = open_onnxruntime(int8_file, torch.get_num_threads())
    return quantized


def profile_ops(runtime: OnnxRuntimeModel, plain: torch.Tensor, eager, runs: int = 3) -> None:
    """Prints the top operator types by time, onnxruntime's and PyTorch's, per forward."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        profiled = open_onnxruntime(runtime.model_file, torch.get_num_threads(),
                                    profile_prefix=str(Path(tmp) / "onnxruntime"))
        feed = {runtime.sidecar.input_name: plain.numpy()}
        for _ in range(runs):
            profiled.run(None, feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    by_op: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1e3 / runs  # us -> ms
    print(f"  onnxruntime, ms a forward (total {sum(by_op.values()):.0f}): " + ", ".join(
        f"{op} {ms:.0f}" for op, ms in by_op.most_common(8)))
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            eager()
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) / 1e3 / runs
    print(f"  PyTorch eager fp32, ms a forward (total {total:.0f}): " + ", ".join(
        f"{e.key} {e.self_cpu_time_total / 1e3 / runs:.0f}" for e in ops[:8]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=641)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default="cmt-deeplab-s,max-deeplab-s")
    parser.add_argument("--image", type=Path, help="default: the first COCO sample image")
    parser.add_argument("--int8", action="store_true",
                        help="also onnxruntime's dynamic int8 quantization of the graph")
    parser.add_argument("--profile", action="store_true",
                        help="also the time per operator type, onnxruntime's and PyTorch's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(report_load())
    info = coco_panoptic_info()
    size = (args.size, args.size)
    image_path = args.image or sorted(SAMPLE.glob("*.jpg"))[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = cmt_deeplab.build_model(name).eval()
            start = time.perf_counter()
            onnx_file = Path(tmp) / f"{name}.onnx"
            export_model(model, onnx_file, size=size, info=info)
            export_s = time.perf_counter() - start
            runtime = OnnxRuntimeModel(onnx_file, num_threads=args.threads)
            predictor = Predictor(model, info, size=size, device="cpu", inplace=True)
            fast = predictor.model  # BNs folded, channels-last
            images, _ = predictor.preprocess(load_image(image_path))
            images = images[None].contiguous(memory_format=torch.channels_last)
            plain = images.contiguous()

            def eager(fast=fast, images=images):
                return fast(images)

            def bf16(fast=fast, images=images):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fast(images)

            def onnx(runtime=runtime, plain=plain):
                return runtime(plain)

            calls = {"eager fp32": eager, "eager bf16 autocast": bf16, "onnxruntime fp32": onnx}
            if args.int8:
                int8_runtime = quantized_runtime(runtime, onnx_file)
                calls["onnxruntime int8"] = lambda runtime=int8_runtime, plain=plain: runtime(plain)
            with torch.inference_mode():
                results = {label: call() for label, call in calls.items()}  # + warm-up
                seconds = alternating_medians(calls, args.rounds)
            reference = {k: v.float() for k, v in results["eager fp32"].items()
                         if k in ("pred_logits", "pred_masks")}
            print(f"\n{name} at {args.size}x{args.size}, batch 1, {args.threads} threads "
                  f"(ONNX export {export_s:.0f} s)")
            print(f"{'path':22} {'s/img':>7} {'img/s':>7} {'vs fp32':>8} {'class d':>9} "
                  f"{'mask d':>9} {'slot':>8} {'panoptic':>9}")
            for label in calls:
                p = parity(results[label], reference, info, size)
                ratio = seconds["eager fp32"] / seconds[label]
                print(f"{label:22} {seconds[label]:7.3f} {1 / seconds[label]:7.3f} "
                      f"{ratio:7.2f}x {p['logits']:9.2e} {p['masks']:9.2e} {p['slot']:8.4%} "
                      f"{p['panoptic']:9.4%}")
                rows.append((name, label, seconds[label], ratio, p))
            if args.profile:
                profile_ops(runtime, plain, eager)
            del runtime, predictor, fast, model
    print("\n" + report_load())


if __name__ == "__main__":
    main()
