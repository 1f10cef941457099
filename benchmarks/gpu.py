"""GPU speed and memory: FPS at 1200x800 (batch 1) in bf16 autocast and fp32 for CMT-S, CMT-L,
CMT-L-RFN and MaX-S, plus training memory per image (forward + losses + backward).

    python benchmarks/gpu.py [--height 800 --width 1200] [--models ...] [--compile]

Needs CUDA; prints the device name beside every number. The paper's V100 figures (TF 2.7):
MaX-S 11.9 FPS, CMT-S 8.1, CMT-L 6.0, CMT-L-RFN 3.2. Our target: CMT-S >= 40 FPS on one H100.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median_seconds  # noqa: E402

import cmt_deeplab  # noqa: E402
from cmt_deeplab.inference.fast import optimize_for_inference  # noqa: E402
from cmt_deeplab.losses import PanopticCriterion  # noqa: E402

PAPER_FPS = {"max-deeplab-s": 11.9, "cmt-deeplab-s": 8.1, "cmt-deeplab-l": 6.0, "cmt-deeplab-l-rfn": 3.2}


def _fake_targets(batch: int, height: int, width: int, device: torch.device) -> list[dict]:
    targets = []
    for _ in range(batch):
        masks = torch.zeros(4, height, width, dtype=torch.bool, device=device)
        masks[0, : height // 2] = True
        masks[1, height // 2 :, : width // 2] = True
        masks[2, height // 2 :, width // 2 :] = True
        masks[3, height // 4 : height // 2, width // 4 : width // 2] = True
        masks[0] &= ~masks[3]
        semantic = torch.full((height, width), -1, dtype=torch.long, device=device)
        labels = torch.tensor([90, 0, 1, 2], device=device)
        for mask, label in zip(masks, labels, strict=True):
            semantic[mask] = label
        targets.append({"masks": masks, "labels": labels, "is_thing": labels < 80,
                        "void": ~masks.any(0), "semantic": semantic})
    return targets


def training_memory_per_image(name: str, height: int, width: int, device: torch.device,
                              batch: int = 1) -> float:
    """Peak CUDA memory of one training step (bf16 autocast) divided by the batch."""
    model = cmt_deeplab.build_model(name).to(device).train()
    criterion = PanopticCriterion(133)
    images = torch.randn(batch, 3, height, width, device=device)
    targets = _fake_targets(batch, height, width, device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(images)
    losses = criterion(outputs, targets)
    losses["loss"].backward()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del model, outputs, losses
    torch.cuda.empty_cache()
    return peak / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--models", default="max-deeplab-s,cmt-deeplab-s,cmt-deeplab-l,cmt-deeplab-l-rfn")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    images = torch.randn(1, 3, args.height, args.width, device=device)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    print(f"{'model':20} {'fp32 FPS':>9} {'bf16 FPS':>9} {'compiled':>9} {'train mem/img':>14} {'paper V100 FPS':>15}")
    for name in args.models.split(","):
        model = optimize_for_inference(cmt_deeplab.build_model(name).to(device))
        with torch.inference_mode():
            fp32 = 1 / median_seconds(lambda m=model: m(channels_last), args.repeats, 3, "cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = 1 / median_seconds(lambda m=model: m(channels_last), args.repeats, 3, "cuda")
            compiled = float("nan")
            if args.compile:
                try:
                    fast = torch.compile(model, dynamic=False)
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        compiled = 1 / median_seconds(lambda m=fast: m(channels_last), args.repeats, 3, "cuda")
                except Exception as error:  # noqa: BLE001 - the compile path is optional
                    print(f"torch.compile failed for {name}: {error}")
        del model
        torch.cuda.empty_cache()
        memory = float("nan") if args.no_memory else training_memory_per_image(name, args.height, args.width, device) / 2**30
        print(f"{name:20} {fp32:9.1f} {bf16:9.1f} {compiled:9.1f} {memory:11.1f} GiB {PAPER_FPS.get(name, float('nan')):15.1f}")


if __name__ == "__main__":
    main()
