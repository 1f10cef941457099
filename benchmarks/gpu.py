"""GPU speed and memory: FPS at 1200x800 (batch 1) in bf16 autocast and fp32 for CMT-S, CMT-L,
CMT-L-RFN and MaX-S, plus training memory per image (forward + losses + backward).

    python benchmarks/gpu.py [--height 800 --width 1200] [--models ...] [--compile]
    python benchmarks/gpu.py --device cpu --models cmt-deeplab-tiny --height 65 --width 97 \
        --repeats 1   # a smoke run of this script on a machine without a GPU (CI runs it)

Prints the device name and a markdown table (for benchmarks/README.md); training memory is
measured on CUDA only. The paper's V100 figures (TF 2.7):
MaX-S 11.9 FPS, CMT-S 8.1, CMT-L 6.0, CMT-L-RFN 3.2. Our target: CMT-S >= 40 FPS on one H100.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median_seconds  # noqa: E402

import cmt_deeplab  # noqa: E402
from cmt_deeplab.inference.fast import optimize_for_inference  # noqa: E402
from cmt_deeplab.losses import PanopticCriterion  # noqa: E402
from cmt_deeplab.models import model_spec  # noqa: E402

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
    """Peak memory (bytes) of one training step (bf16 autocast) divided by the batch; on CPU
    the step runs (so a smoke run checks it) but no peak is measured: NaN."""
    model = cmt_deeplab.build_model(name).to(device).train()
    criterion = PanopticCriterion(model_spec(model).kwargs["num_classes"])
    images = torch.randn(batch, 3, height, width, device=device)
    targets = _fake_targets(batch, height, width, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        outputs = model(images)
    losses = criterion(outputs, targets)
    losses["loss"].backward()
    if not cuda:
        return float("nan")
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
    parser.add_argument("--device", default="cuda",
                        help="cuda (the benchmark) or cpu (a smoke run: not GPU numbers)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("benchmarks/gpu.py needs a CUDA device (or --device cpu for a smoke run)")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"{device.type} (smoke run: not GPU numbers)"
    print(f"device: {device_name}, torch {torch.__version__}, input {args.width}x{args.height}, "
          "batch 1, model forward (BNs folded, channels-last)\n")
    images = torch.randn(1, 3, args.height, args.width, device=device)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    print("| model | fp32 FPS | bf16 FPS | bf16 compiled FPS | training memory / image | "
          "paper V100 FPS |")
    print("|---|---|---|---|---|---|")

    def fps(call: Callable[[], object]) -> float:
        return 1 / median_seconds(call, args.repeats, 3, device.type)

    for name in args.models.split(","):
        model = optimize_for_inference(cmt_deeplab.build_model(name).to(device))
        with torch.inference_mode():
            fp32 = fps(lambda m=model: m(channels_last))
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bf16 = fps(lambda m=model: m(channels_last))
            compiled = float("nan")
            if args.compile:
                try:
                    fast = torch.compile(model, dynamic=False)
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        compiled = fps(lambda m=fast: m(channels_last))
                except Exception as error:  # noqa: BLE001 - the compile path is optional
                    print(f"torch.compile failed for {name}: {error}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        memory = float("nan") if args.no_memory else (
            training_memory_per_image(name, args.height, args.width, device) / 2**30)
        paper = PAPER_FPS.get(name, float("nan"))
        print(f"| {name} | {fp32:.1f} | {bf16:.1f} | {compiled:.1f} | {memory:.2f} GiB | "
              f"{paper:.1f} |", flush=True)


if __name__ == "__main__":
    main()
