"""This process's resident memory (CPU): now, its peak, and a reset of the peak.

Shared by ``train --dry-run`` and ``utils.cost``; Linux reads ``/proc``, elsewhere the peak
falls back to ``getrusage`` (the process's lifetime peak).
"""

from __future__ import annotations

import os
import resource


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
