"""Checkpoints: model directories (``model.safetensors`` + ``config.yaml``) and resumable
training states.

A *model directory* is what ``predict`` / ``Predictor.from_checkpoint`` read::

    DIR/model.safetensors   state dict, parameters and buffers (safetensors: no pickle)
    DIR/config.yaml         model: {name, build_kwargs}, data: DatasetInfo.to_dict(),
                            input: {crop, eval_size}, train: the full training config

A *training state* adds what an exact resume needs, one directory per saved step::

    OUT/checkpoints/step_0001000/
        model.safetensors   as above
        config.yaml         as above (so any step can be loaded like a model directory)
        state.safetensors   every tensor of the state (optimizer moments, RNG states)
        state.json          everything else (step, epoch, sampler position, scheduler, ...)
        COMPLETE            written last

Each file is written atomically into a temporary sibling directory, which becomes
``step_XXXXXXX`` by one ``os.rename`` after ``COMPLETE`` is in place: a killed run leaves
either a complete step directory or a ``.tmp-*`` directory that ``latest_checkpoint`` ignores
(and ``save_training_state`` removes). Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from cmt_deeplab.utils.io import atomic_write_bytes, atomic_write_text, fsync_directory

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
STATE_TENSORS_FILE = "state.safetensors"
STATE_JSON_FILE = "state.json"
COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --- model directories ---------------------------------------------------------------------


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside ``DistributedDataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def model_config(model: nn.Module) -> dict[str, Any]:
    """``{"name", "build_kwargs"}``: enough for ``build_model`` to rebuild ``model``."""
    from cmt_deeplab.models.registry import model_spec

    spec = model_spec(unwrap_model(model))
    return {"name": spec.name, "build_kwargs": to_plain(spec.kwargs)}


def save_model_dir(directory: str | Path, model: nn.Module, config: Mapping[str, Any]) -> Path:
    """Writes ``directory/model.safetensors`` and ``directory/config.yaml``, each atomically.

    Args:
        directory: created if missing.
        model: a model from ``build_model`` (it carries a ``ModelSpec``), possibly
            wrapped in DDP.
        config: the rest of ``config.yaml``; it needs ``data`` (a ``DatasetInfo`` or its
            ``to_dict()``), the categories the model predicts, and usually holds ``input``
            (``crop``, ``eval_size``) and ``train`` (the full training config). A ``model`` key
            is replaced by the model's own name and build arguments.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    document = _config_document(model, config)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / MODEL_FILE, _state_dict_bytes(unwrap_model(model)))
    atomic_write_text(directory / CONFIG_FILE, yaml.safe_dump(document, sort_keys=False))
    return directory


def load_model_dir(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model of a model directory (or a training-state step directory).

    Args:
        path: the directory, or its ``model.safetensors`` / ``config.yaml``.
        device: where the model goes (default CPU).

    Returns:
        ``(model in eval mode, config dict)``.

    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        ValueError: a corrupt or incomplete file, or weights that do not fit the model
            (missing / unexpected keys, shape mismatches), naming the file.
    """
    from cmt_deeplab.models.registry import build_model

    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    config = read_config(directory / CONFIG_FILE)
    model_section = config["model"]
    try:
        model = build_model(model_section["name"], **dict(model_section.get("build_kwargs") or {}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / CONFIG_FILE}: cannot build the model: {error}") from None
    state = read_safetensors(directory / MODEL_FILE)
    load_state_dict_checked(model, state, directory / MODEL_FILE)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval(), config


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.yaml`` of a model directory, checked for its ``model`` section."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint config not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read checkpoint config {path}: {error}") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"checkpoint config {path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint config {path} is not a mapping")
    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise ValueError(f"checkpoint config {path} lacks model.name")
    if not isinstance(model.get("build_kwargs", {}) or {}, dict):
        raise ValueError(f"checkpoint config {path}: model.build_kwargs is not a mapping")
    return config


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (CPU); errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {path}") from None
    except OSError as error:
        raise ValueError(f"cannot read weights file {path}: {error}") from None
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ValueError(f"corrupt or truncated weights file {path}: {error}") from None


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path
) -> None:
    """``model.load_state_dict(state, strict=True)`` with one error listing every mismatch."""
    model = unwrap_model(model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state and tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es), e.g. {mismatched[:5]}")
        raise ValueError(f"weights in {source} do not fit {type(model).__name__}: "
                         + "; ".join(parts))
    model.load_state_dict(dict(state), strict=True)


def _config_document(model: nn.Module, config: Mapping[str, Any]) -> dict[str, Any]:
    from cmt_deeplab.data.metadata import DatasetInfo

    if "data" not in config:
        raise ValueError("config needs 'data': the DatasetInfo (categories) the model predicts")
    data = config["data"]
    document: dict[str, Any] = {"model": model_config(model)}
    for key, value in config.items():
        if key == "model":
            continue
        document[key] = value.to_dict() if isinstance(value, DatasetInfo) else to_plain(value)
    document["data"] = data.to_dict() if isinstance(data, DatasetInfo) else to_plain(data)
    return document


def _state_dict_bytes(model: nn.Module) -> bytes:
    """The state dict as safetensors bytes (tensors sharing storage are stored once each)."""
    tensors = {}
    for key, value in model.state_dict().items():
        # safetensors refuses shared storage and non-contiguous views: store private copies.
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
    return save_safetensors(tensors, metadata={"format": "pt"})


# --- plain data ----------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python, dataclasses -> dicts (for YAML / JSON)."""
    import dataclasses

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


def _encode(value: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """JSON skeleton of ``value`` with each tensor moved into ``tensors`` under a path key."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        # Pairs, not an object: optimizer states have integer keys that JSON would stringify.
        return {"__dict__": [[k, _encode(v, tensors, f"{key}.{k}")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {key!r} in a training state")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _decode(v, tensors) for k, v in value["__dict__"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


# --- RNG states ----------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states: Python, numpy, torch CPU and every CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of ``capture_rng_state`` (after a JSON round trip)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --- training states -----------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete training states under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest *complete* training state, or ``None``."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def save_training_state(
    out_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    keep_last: int = 3,
) -> Path:
    """Writes ``out_dir/checkpoints/step_XXXXXXX`` (see the module notes) and keeps the
    newest ``keep_last`` complete states (0 keeps all).

    Args:
        step: optimizer steps done.
        model: the (possibly wrapped) model.
        optimizer: its ``state_dict`` goes to ``state.safetensors`` / ``state.json``.
        state: anything else to restore (scheduler, RNG states, sampler position, ...);
            tensors, numpy arrays, tuples, dicts with int or str keys and JSON scalars.
        config: as for ``save_model_dir`` (``data`` required).

    Returns:
        The step directory.
    """
    root = Path(out_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    final = root / step_dir_name(step)
    temporary = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {
        "step": int(step),
        "optimizer": _encode(optimizer.state_dict(), tensors, "optimizer"),
        "state": _encode(dict(state), tensors, "state"),
    }
    save_model_dir(temporary, model, config)
    atomic_write_bytes(temporary / STATE_TENSORS_FILE, save_safetensors(tensors))
    atomic_write_text(temporary / STATE_JSON_FILE, json.dumps(skeleton))
    atomic_write_text(temporary / COMPLETE_MARKER, f"{step}\n")
    if final.exists():  # the same step saved again (e.g. a re-run): swap it out
        old = root / f".tmp-old-{step_dir_name(step)}-{os.getpid()}"
        os.rename(final, old)
        os.rename(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(temporary, final)
    fsync_directory(root)
    if keep_last > 0:
        for _, old_dir in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old_dir, ignore_errors=True)
    return final


def load_training_state(
    checkpoint_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Loads the weights (and optimizer state) of a step directory into ``model`` / ``optimizer``.

    Returns:
        ``{"step": int, "state": the saved ``state`` mapping}``.

    Raises:
        FileNotFoundError / ValueError: incomplete, missing or corrupt files, naming them.
    """
    directory = Path(checkpoint_dir)
    if not (directory / COMPLETE_MARKER).is_file():
        raise ValueError(f"training state {directory} is incomplete (no {COMPLETE_MARKER} file)")
    weights = read_safetensors(directory / MODEL_FILE)
    tensors = read_safetensors(directory / STATE_TENSORS_FILE)
    json_path = directory / STATE_JSON_FILE
    try:
        skeleton = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"training state file not found: {json_path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"corrupt training state file {json_path}: {error}") from None
    try:
        optimizer_state = _decode(skeleton["optimizer"], tensors)
        state = _decode(skeleton["state"], tensors)
        step = int(skeleton["step"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"corrupt training state {directory}: missing or bad entry {error}") \
            from None
    load_state_dict_checked(model, weights, directory / MODEL_FILE)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (KeyError, ValueError, RuntimeError) as error:
            raise ValueError(f"optimizer state in {directory} does not fit: {error}") from None
        _match_parameter_layouts(optimizer)
    return {"step": step, "state": state}


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Gives each per-parameter state tensor its parameter's memory layout.

    States are stored contiguous; a channels-last parameter's moments must be channels-last
    again, because the fused Adam kernels walk parameter and state memory in step and would
    silently pair the wrong elements.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if (isinstance(value, torch.Tensor) and value.shape == param.shape
                        and value.stride() != param.stride()):
                    optimizer.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _remove_stale_temporaries(root: Path) -> None:
    """Drops ``.tmp-*`` directories left by killed runs."""
    for entry in root.iterdir():
        if entry.name.startswith(".tmp-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)

