"""Device names from configs and command lines, checked once for every entry point."""

from __future__ import annotations

import torch


def resolve_device(name: str, option: str = "device") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device name, validated.

    Args:
        name: e.g. ``"auto"``, ``"cpu"``, ``"cuda:1"``.
        option: how the caller spells the setting (``"run.device"``, ``"--device"``), so the
            error names what the user wrote.

    Raises:
        ValueError: an unknown name, or a CUDA device on a machine without CUDA.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"invalid {option} {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option}={name}: CUDA is not available on this machine")
    return device
