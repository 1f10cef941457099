"""Peak memory of a piece of work, measured in one place (``track_peak_memory``).

On CUDA the peak is torch's ``max_memory_allocated``; on the CPU it is this process's peak
resident set size, reset before the work so that memory held earlier does not hide it
(Linux reads ``/proc``; elsewhere the peak falls back to ``getrusage``, the process's
lifetime peak). ``train --dry-run`` and the cost table's forward and training memory use it.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass
class PeakMemory:
    """What ``track_peak_memory`` measured: ``peak`` and ``base`` (before the work) in bytes,
    and ``kind``, which says how."""

    kind: str
    base: int = 0
    peak: int = 0

    @property
    def increase(self) -> int:
        """The peak over the memory before the work (never negative)."""
        return max(0, self.peak - self.base)


@contextlib.contextmanager
def track_peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measures the peak memory of the ``with`` block on ``device`` (filled in at its end).

    CUDA: allocated tensor memory (synchronised before and after). CPU: resident memory; the
    kernel folds the resident count into the peak lazily, so the increase is clamped at 0.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        memory = PeakMemory("CUDA max_memory_allocated", torch.cuda.memory_allocated(device))
        yield memory
        torch.cuda.synchronize(device)
        memory.peak = torch.cuda.max_memory_allocated(device)
    else:
        reset_peak_rss()
        memory = PeakMemory("CPU peak RSS increase", current_rss_bytes())
        yield memory
        memory.peak = peak_rss_bytes()


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"


def current_rss_bytes() -> int:
    """Resident set size now (the peak where ``/proc/self/statm`` is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return peak_rss_bytes()


def reset_peak_rss() -> None:
    """Starts the peak resident size afresh (Linux >= 4.0), so that a measurement inside a
    process that has held more memory before still sees only its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # elsewhere the peak is the process's: an upper bound


def peak_rss_bytes() -> int:
    """Peak resident set size since the start or the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
