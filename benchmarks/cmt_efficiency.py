"""CMT-S / MaX-S inference latency ratio at the paper's size (800x1200) and at 641x641: the
plain eval module (as ``model.eval()``) and the inference copy (``inference.fast.
optimize_for_inference``, what ``predict`` runs), each with glibc's default allocator and with
it keeping freed blocks (``utils.allocator.keep_freed_memory``, as ``predict``, ``evaluate``,
``cost`` and training run on the CPU), batch 1, fp32.

    python benchmarks/cmt_efficiency.py [--sizes 800x1200,641x641] [--rounds 3] [--repeats 2]
        [--threads 2] [--paths plain,plain+keep,fused,fused+keep]

Every (model, path, size) forward is timed in its own fresh process (``--worker``): warm-up
forward, then the median of ``--repeats`` forwards under ``torch.inference_mode``. The
processes of a size run in alternating rounds, so a load change hits all of them; the script
prints the median latency of each and the ratio CMT-S / MaX-S of the medians for each path
(target at 800x1200: <= 1.47, the paper's V100 FPS ratio 11.9 / 8.1), and the load average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import report_load  # noqa: E402

MODELS = ("cmt-deeplab-s", "max-deeplab-s")
#: plain: the eval module; fused: the inference copy; +keep: in a process whose glibc keeps
#: freed blocks (``utils.allocator.keep_freed_memory``, as ``predict`` and ``cost`` run).
PATHS = ("plain", "plain+keep", "fused", "fused+keep")
TARGET = 1.47


def _worker(name: str, path: str, height: int, width: int, repeats: int, threads: int) -> None:
    import torch

    import cmt_deeplab
    from cmt_deeplab.inference.fast import optimize_for_inference
    from cmt_deeplab.utils.allocator import keep_freed_memory

    torch.set_num_threads(threads)
    if path.endswith("+keep"):
        keep_freed_memory()
    model = cmt_deeplab.build_model(name).eval()
    if path.startswith("fused"):
        model = optimize_for_inference(model)
    images = torch.zeros(1, 3, height, width)
    times = []
    with torch.inference_mode():
        model(images)
        for _ in range(repeats):
            start = time.perf_counter()
            model(images)
            times.append(time.perf_counter() - start)
    print(json.dumps({"latency_s": statistics.median(times)}))


def _run_worker(name: str, path: str, size: tuple[int, int], args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--worker", name, path, f"{size[0]}x{size[1]}",
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{name} ({path}) at {size}: worker failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["latency_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="800x1200,641x641")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated, from {', '.join(PATHS)}")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PATH", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, path, size = args.worker
        height, width = (int(v) for v in size.split("x"))
        _worker(name, path, height, width, args.repeats, args.threads)
        return

    print(f"start: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {report_load()}")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown --paths {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    for size in sizes:
        times: dict[tuple[str, str], list[float]] = {(m, p): [] for m in MODELS for p in paths}
        for round_index in range(args.rounds):
            for path in paths:
                for name in MODELS:
                    times[(name, path)].append(_run_worker(name, path, size, args))
            row = ", ".join(f"{m} {p} {times[(m, p)][-1]:.2f}s" for p in paths for m in MODELS)
            print(f"  {size[0]}x{size[1]} round {round_index + 1}: {row}; {report_load()}", flush=True)
        print(f"{size[0]}x{size[1]}, {args.threads} threads, medians of {args.rounds} rounds:")
        for path in paths:
            cmt = statistics.median(times[("cmt-deeplab-s", path)])
            max_ = statistics.median(times[("max-deeplab-s", path)])
            rounds = [c / m for c, m in zip(times[("cmt-deeplab-s", path)],
                                            times[("max-deeplab-s", path)], strict=True)]
            print(f"  {path:10s}: CMT-S {cmt:.2f} s, MaX-S {max_:.2f} s, ratio {cmt / max_:.2f} "
                  f"(per round {min(rounds):.2f}-{max(rounds):.2f})"
                  + (f"; target <= {TARGET}" if size == (800, 1200) else ""))
        if "plain" in paths:
            plain = statistics.median(times[("cmt-deeplab-s", "plain")])
            for path in paths[1:]:
                print(f"  CMT-S {path} / plain: "
                      f"{statistics.median(times[('cmt-deeplab-s', path)]) / plain:.2f}")
    print(f"end: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {report_load()}")


if __name__ == "__main__":
    main()
