"""Nested training state <-> a JSON skeleton plus a flat dict of tensors.

A training state (optimizer moments, scheduler, RNG states, sampler position) is a tree of
dicts, lists and tuples with tensors, numpy arrays and scalars at the leaves. ``encode_state``
moves every tensor into a flat ``{path: tensor}`` dict (saved as safetensors) and leaves a
JSON skeleton that names each one; ``decode_state`` puts them back. Nothing is pickled, and
what JSON cannot say directly is tagged:

    {"__tensor__": "optimizer.state.3.exp_avg"}     a tensor, by its key in the tensor file
    {"__ndarray__": [...], "dtype": "uint32"}       a numpy array (the numpy RNG state)
    {"__tuple__": [...]}                             a tuple (the Python RNG state)
    {"__dict__": [[key, value], ...]}                a dict with its keys' types kept
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def encode_state(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON skeleton of ``value``; each tensor is copied into ``tensors`` under its path key.

    Raises:
        TypeError: a value that is none of the types above, naming its path.
    """
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        # Pairs, not an object: optimizer states have integer keys that JSON would stringify.
        return {"__dict__": [[k, encode_state(v, tensors, f"{key}.{k}")]
                             for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{key}.{i}")
                              for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {key!r} in a training state")


def decode_state(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of ``encode_state``."""
    if isinstance(value, list):
        return [decode_state(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if "__tuple__" in value:
            return tuple(decode_state(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: decode_state(v, tensors) for k, v in value["__dict__"]}
        return {k: decode_state(v, tensors) for k, v in value.items()}
    return value
