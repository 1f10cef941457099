"""Plain data for YAML and JSON: what configs and checkpoint files are written from."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_plain(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python, dataclasses -> dicts, paths -> strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k) if not isinstance(k, (int, str)) else k: to_plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
