"""Let glibc keep freed large blocks for reuse instead of returning them to the kernel (CPU).

Every training step allocates and frees the same large tensors (activations saved for
backward, the ``[B, k, k]`` pixel similarities). glibc serves a block above its mmap threshold
(adaptive, but never above 32 MiB) with a fresh ``mmap`` and unmaps it on free, and it trims
the top of its heap beyond the trim threshold; either way the next step page-faults the same
memory back in, 4 KiB at a time, in the kernel. ``benchmarks/cpu_allocator.py`` (2 cores):
a ``cmt-deeplab-tiny`` step on a 705x1025 crop ran 1.44x faster with the thresholds raised
(415k -> 48k page faults a step), a 97x97 batch-8 step 1.25x. This is what the jemalloc /
tcmalloc preloads of PyTorch's CPU performance guide do, without a preload. Peak memory does not
change; memory freed after the peak stays with the process.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap (glibc < 2.35 caps it at 32 MiB: the fallback).
MMAP_THRESHOLD = 1 << 30
_MMAP_THRESHOLD_CAPPED = 32 << 20
#: Free memory at the top of the heap kept before glibc gives it back (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1

_tuned = False


def keep_freed_memory() -> bool:
    """Raises glibc's mmap and trim thresholds for this process (once; later calls are no-ops).

    Returns whether the allocator is tuned: ``False`` off Linux or without glibc (other
    allocators are left alone).
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Setting one threshold turns off glibc's adaptation of both: set both.
    mmap_ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or mallopt(
        _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_CAPPED)
    _tuned = bool(mmap_ok) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _tuned
