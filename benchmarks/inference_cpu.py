"""CPU inference speed per MAC: CMT-DeepLab-S and MaX-DeepLab-S against HF MaskFormer-SwinB
and Mask2Former-R50 and the GEMM roof, all measured in this run.

    python benchmarks/inference_cpu.py [--size 641] [--threads 2] [--repeats 3]

fp32, batch 1, eval mode, ``torch.inference_mode``. MACs: torch FlopCounterMode / 2 for every
model (ours on the meta device, equal to a real count). Prints seconds, GMACs, GMAC/s, the
fraction of the GEMM roof and the ratio CMT-S / MaskFormer-SwinB (target >= 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hf_models  # noqa: E402
from _common import (  # noqa: E402
    alternating_medians,
    count_forward_macs,
    gemm_peak_gmacs,
    report_load,
)

import cmt_deeplab  # noqa: E402
from cmt_deeplab.inference.fast import optimize_for_inference  # noqa: E402
from cmt_deeplab.utils.flops import count_macs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=641)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="cmt-deeplab-s,max-deeplab-s")
    parser.add_argument("--no-peers", action="store_true", help="skip the HF models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(report_load())
    peak = gemm_peak_gmacs()
    print(f"fp32 GEMM roof ({args.threads} threads): {peak:.1f} GMAC/s")
    images = torch.randn(1, 3, args.size, args.size)
    # Every model is built first, then timed in alternating rounds: a load change on this
    # shared machine then hits all of them alike instead of one.
    calls: dict[str, object] = {}
    macs: dict[str, int] = {}
    for name in args.models.split(","):
        macs[name] = count_macs(lambda name=name: cmt_deeplab.build_model(name), args.size,
                                args.size)
        model = optimize_for_inference(cmt_deeplab.build_model(name).eval())
        calls[name] = lambda model=model: model(images)
    if not args.no_peers and hf_models.available():
        for name, build in hf_models.PEERS.items():
            model = build().eval()
            calls[name] = lambda model=model: model(pixel_values=images)
            with torch.inference_mode():
                macs[name] = count_forward_macs(calls[name])
    elif not args.no_peers:
        print("transformers is not installed: pip install -c constraints.txt -e '.[bench]' for the peers")
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm-up
        seconds = alternating_medians(calls, args.repeats)
    rows = [(name, seconds[name], macs[name]) for name in calls]
    print(f"\n{'model':20} {'seconds':>8} {'GMACs':>8} {'GMAC/s':>8} {'of roof':>8}")
    speed = {}
    for name, seconds, macs in rows:
        speed[name] = macs / 1e9 / seconds
        print(f"{name:20} {seconds:8.3f} {macs / 1e9:8.1f} {speed[name]:8.1f} {speed[name] / peak:8.1%}")
    if "cmt-deeplab-s" in speed and "maskformer-swin-b" in speed:
        ratio = speed["cmt-deeplab-s"] / speed["maskformer-swin-b"]
        print(f"\nCMT-DeepLab-S / MaskFormer-SwinB GMAC/s: {ratio:.2f} (target >= 1.00)")
    print(report_load())


if __name__ == "__main__":
    main()
