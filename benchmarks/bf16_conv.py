"""Why bf16 convolutions gain little under ``torch.autocast`` on the CPU, and what does gain.

    python benchmarks/bf16_conv.py [--rounds 20] [--threads 2]

Single convolutions at shapes of the models' 641x641 forward (the stem's 3x3 at stride 2, the
3x3s of the stride-4/8/16 stages, the 1x1s of the stride-16/32 stages), batch 1, each timed as

- ``fp32 NCHW`` and ``fp32 NHWC``: float32, contiguous and channels-last;
- ``autocast``: the NHWC float32 module under ``torch.autocast("cpu", torch.bfloat16)``, as
  ``--precision bf16`` on a plain model: the float32 weight is cast to bf16 at every call;
- ``bf16 NHWC`` and ``bf16 NCHW``: weight already bf16 (cast once, as the inference copy of
  ``Predictor(precision="bf16")`` keeps it) and a bf16 input.

Alternating rounds (a load change hits every variant alike), medians, GMAC/s and the speed-up
of each over ``fp32 NHWC``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternating_medians, host_probe, report_load  # noqa: E402

#: (channels in, channels out, spatial size, kernel, stride) at a 641x641 input.
SHAPES = [(3, 64, 641, 3, 2), (64, 64, 321, 3, 1), (128, 128, 161, 3, 1), (256, 256, 81, 3, 1),
          (512, 512, 41, 3, 1), (1024, 256, 41, 1, 1), (2048, 512, 21, 1, 1)]


def variants(c_in: int, c_out: int, size: int, kernel: int, stride: int) -> dict:
    """The calls to time, each one convolution of the same weights and input."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, c_in, size, size, generator=generator)
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False).eval()
    nhwc = conv.to(memory_format=torch.channels_last)
    image_nhwc = image.contiguous(memory_format=torch.channels_last)
    weight_bf16 = nhwc.weight.detach().bfloat16()
    image_bf16 = image_nhwc.bfloat16()
    weight_bf16_nchw = weight_bf16.contiguous()
    image_bf16_nchw = image_bf16.contiguous()
    padding = kernel // 2

    def autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return nhwc(image_nhwc)

    return {
        "fp32 NCHW": lambda: F.conv2d(image, conv.weight.contiguous(), None, stride, padding),
        "fp32 NHWC": lambda: nhwc(image_nhwc),
        "autocast": autocast,
        "bf16 NHWC": lambda: F.conv2d(image_bf16, weight_bf16, None, stride, padding),
        "bf16 NCHW": lambda: F.conv2d(image_bf16_nchw, weight_bf16_nchw, None, stride, padding),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(report_load())
    print(host_probe(), flush=True)
    names = None
    rows = []
    with torch.inference_mode():
        for shape in SHAPES:
            c_in, c_out, size, kernel, stride = shape
            calls = variants(*shape)
            names = list(calls)
            for call in calls.values():  # oneDNN builds its primitive on the first call
                call()
            seconds = alternating_medians(calls, args.rounds)
            out_size = (size + stride - 1) // stride
            macs = c_in * c_out * kernel * kernel * out_size * out_size
            rows.append((shape, macs, seconds))
            print(f"  {c_in}->{c_out} {kernel}x{kernel}/{stride} at {size}x{size}: "
                  + ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in seconds.items()), flush=True)
    print(f"\n{report_load()}; {host_probe()}; {args.threads} threads, medians of "
          f"{args.rounds} alternating rounds\n")
    print("| conv | " + " | ".join(f"{n} GMAC/s" for n in names) + " | autocast / fp32 NHWC "
          "| bf16 NHWC / fp32 NHWC |")
    print("|---" * (len(names) + 3) + "|")
    for (c_in, c_out, size, kernel, stride), macs, seconds in rows:
        rates = " | ".join(f"{macs / s / 1e9:.0f}" for s in seconds.values())
        base = seconds["fp32 NHWC"]
        print(f"| {c_in}->{c_out} {kernel}x{kernel}/{stride} at {size} | {rates} | "
              f"{base / seconds['autocast']:.2f}x | {base / seconds['bf16 NHWC']:.2f}x |")


if __name__ == "__main__":
    main()
