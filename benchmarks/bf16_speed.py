"""bf16 inference on the CPU against float32 eager: speed, and optionally the panoptic agreement
of a trained model's maps.

    python benchmarks/bf16_speed.py [--size 641] [--threads 2] [--rounds 5]
        [--models cmt-deeplab-s,max-deeplab-s]
        [--checkpoint DIR --images DIR [--max-images N]]

Speed: for each model (random weights, seed 0, COCO heads), batch 1, ``--threads`` threads,
alternating rounds (medians), the ratio to float32 eager of the same run:
``eager fp32`` (the Predictor's inference copy: BNs folded, channels-last), ``autocast bf16``
(the same float32 copy under ``torch.autocast``: weights cast at every call) and ``bf16
weights`` (``Predictor(precision="bf16")``'s copy: folded conv / linear weights cast to bf16
once, run under autocast). Agreement (``--checkpoint``): the share of pixels with the same
panoptic label in the float32 and the bf16 Predictor's maps of each image of ``--images``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternating_medians, report_load  # noqa: E402

import cmt_deeplab  # noqa: E402
from cmt_deeplab.data.metadata import coco_panoptic_info  # noqa: E402
from cmt_deeplab.inference.predictor import Predictor  # noqa: E402


def speed(name: str, size: int, rounds: int) -> None:
    info = coco_panoptic_info()
    torch.manual_seed(0)
    model = cmt_deeplab.build_model(name).eval()
    fp32 = Predictor(model, info, size=size, device="cpu").model
    bf16 = Predictor(model, info, size=size, device="cpu", precision="bf16").model
    del model
    images = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)

    def autocast(network):
        def call():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return network(images)
        return call

    calls = {"eager fp32": lambda: fp32(images), "autocast bf16": autocast(fp32),
             "bf16 weights": autocast(bf16)}
    with torch.inference_mode():
        for call in calls.values():  # warm-up
            call()
        seconds = alternating_medians(calls, rounds)
    print(f"\n{name} at {size}x{size}, batch 1, {torch.get_num_threads()} threads, "
          f"{rounds} rounds (medians)")
    print(f"{'path':16} {'s/img':>7} {'img/s':>7} {'vs fp32':>8}")
    for label, value in seconds.items():
        print(f"{label:16} {value:7.3f} {1 / value:7.3f} {seconds['eager fp32'] / value:7.2f}x")


def agreement(checkpoint: Path, images: Path, max_images: int) -> None:
    fp32 = Predictor.from_checkpoint(checkpoint, device="cpu")
    bf16 = Predictor.from_checkpoint(checkpoint, device="cpu", precision="bf16")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    files = files[:max_images] if max_images else files
    if not files:
        raise SystemExit(f"no .jpg / .png images in {images}")
    shares = []
    for path in files:
        shares.append(float((fp32(path).panoptic == bf16(path).panoptic).mean()))
    print(f"\nagreement of bf16 with fp32 panoptic maps, {checkpoint} on {len(files)} images of "
          f"{images}: mean {np.mean(shares):.4%}, min {np.min(shares):.4%}, "
          f"images >= 99%: {np.mean(np.array(shares) >= 0.99):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=641)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", default="cmt-deeplab-s,max-deeplab-s",
                        help="comma-separated; empty: agreement only")
    parser.add_argument("--checkpoint", type=Path, help="trained model directory (agreement)")
    parser.add_argument("--images", type=Path, help="images for the agreement")
    parser.add_argument("--max-images", type=int, default=0, help="first N images (0: all)")
    args = parser.parse_args()
    if (args.checkpoint is None) != (args.images is None):
        parser.error("--checkpoint and --images go together")
    torch.set_num_threads(args.threads)
    print(report_load())
    for name in filter(None, args.models.split(",")):
        speed(name, args.size, args.rounds)
    if args.checkpoint is not None:
        agreement(args.checkpoint, args.images, args.max_images)
    print("\n" + report_load())


if __name__ == "__main__":
    main()
