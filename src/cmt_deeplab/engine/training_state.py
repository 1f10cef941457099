"""Training states: one directory per saved step, everything an exact resume needs.

::

    OUT/checkpoints/step_0001000/
        model.safetensors   the weights (a model directory: ``cmt_deeplab.model_dir``)
        config.yaml         as a model directory's, so any step loads like one
        state.safetensors   every tensor of the state (optimizer moments, RNG states)
        state.json          everything else (step, epoch, sampler position, scheduler, ...),
                            with the tensors named (``engine.state_codec``) and the SHA-256
                            of state.safetensors (config.yaml holds model.safetensors')
        COMPLETE            written last

Each file is written atomically into a temporary sibling directory, which becomes
``step_XXXXXXX`` by one ``os.rename`` after ``COMPLETE`` is in place: a killed run leaves
either a complete step directory or a ``.tmp-*`` directory that ``latest_checkpoint`` ignores
(and ``save_training_state`` removes). Pruning old states works the other way round: a step
directory is first renamed to a ``.tmp-*`` name, which makes it invisible at once, and only
then deleted, so a kill while pruning never leaves a listed state with missing files.
Loading checks both weights files against their recorded digests. Nothing here unpickles
anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from cmt_deeplab.engine.state_codec import decode_state, encode_state
from cmt_deeplab.model_dir import (
    CONFIG_FILE,
    DIGEST_KEY,
    MODEL_FILE,
    load_state_dict_checked,
    read_model_config,
    read_safetensors,
    save_model_dir,
)
from cmt_deeplab.utils.io import (
    atomic_write_bytes,
    atomic_write_text,
    fsync_directory,
    read_json,
)

STATE_TENSORS_FILE = "state.safetensors"
STATE_JSON_FILE = "state.json"
#: The ``state.json`` key holding the SHA-256 (hex) of ``state.safetensors``.
STATE_DIGEST_KEY = "tensors_sha256"
COMPLETE_MARKER = "COMPLETE"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


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
        "optimizer": encode_state(optimizer.state_dict(), tensors, "optimizer"),
        "state": encode_state(dict(state), tensors, "state"),
    }
    save_model_dir(temporary, model, config)
    tensor_bytes = save_safetensors(tensors)
    skeleton[STATE_DIGEST_KEY] = hashlib.sha256(tensor_bytes).hexdigest()
    atomic_write_bytes(temporary / STATE_TENSORS_FILE, tensor_bytes)
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
            remove_training_state(old_dir)
    return final


def remove_training_state(directory: str | Path) -> None:
    """Deletes a step directory so that no moment of it is listed with missing files.

    One ``os.rename`` to a ``.tmp-*`` name takes it out of ``list_checkpoints`` before any
    file goes; a kill after that leaves a temporary directory the next save removes.
    """
    directory = Path(directory)
    doomed = directory.parent / f".tmp-pruned-{directory.name}-{os.getpid()}"
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.rename(directory, doomed)
    fsync_directory(directory.parent)
    shutil.rmtree(doomed, ignore_errors=True)


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
    config = read_model_config(directory / CONFIG_FILE)
    weights = read_safetensors(directory / MODEL_FILE, config.get(DIGEST_KEY))
    skeleton = read_json(directory / STATE_JSON_FILE, "training state file", "corrupt")
    if not isinstance(skeleton, dict):
        raise ValueError(f"corrupt training state {directory / STATE_JSON_FILE}: not a mapping")
    tensors = read_safetensors(directory / STATE_TENSORS_FILE, skeleton.get(STATE_DIGEST_KEY))
    try:
        optimizer_state = decode_state(skeleton["optimizer"], tensors)
        state = decode_state(skeleton["state"], tensors)
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
