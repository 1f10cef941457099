"""Model directories: a trained model as ``model.safetensors`` + ``config.yaml``.

    model = cmt_deeplab.load_model("runs/coco")            # nn.Module in eval mode
    model, config = load_model_dir("runs/coco", "cuda")    # and its config.yaml

A model directory is what ``train`` writes at the end of a run (and into every training
state), and what ``predict``, ``evaluate``, ``visualize``, the demo and
``Predictor.from_checkpoint`` read::

    DIR/model.safetensors   state dict, parameters and buffers (safetensors: no pickle)
    DIR/config.yaml         model: {name, build_kwargs}, data: DatasetInfo.to_dict(),
                            input: {crop, eval_size}, train: the full training config

Both files are written atomically. Loading rebuilds the model with ``build_model`` from the
``model`` section and loads the weights strictly, with one error that lists every mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.models.registry import build_model, model_spec
from cmt_deeplab.utils.io import atomic_write_bytes, atomic_write_text
from cmt_deeplab.utils.plain import to_plain

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
#: The canvas of a model directory without ``input`` sizes.
DEFAULT_SIZE = 641


def load_model(path: str | Path, device: str | torch.device | None = None) -> nn.Module:
    """The model of a model directory, in eval mode (see ``load_model_dir``)."""
    return load_model_dir(path, device)[0]


def load_model_dir(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model of a model directory (or of a training-state step directory).

    Args:
        path: the directory, or its ``model.safetensors`` / ``config.yaml``.
        device: where the model goes (default CPU).

    Returns:
        ``(model in eval mode, config dict)``; ``dataset_info(config)`` and
        ``checkpoint_size(config)`` read its categories and canvas.

    Raises:
        FileNotFoundError: the directory or one of its two files is missing.
        ValueError: a corrupt or incomplete file, or weights that do not fit the model
            (missing / unexpected keys, shape mismatches), naming the file.
    """
    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    config = read_model_config(directory / CONFIG_FILE)
    model_section = config["model"]
    try:
        model = build_model(model_section["name"], **dict(model_section.get("build_kwargs") or {}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{directory / CONFIG_FILE}: cannot build the model: {error}") from None
    state = read_safetensors(directory / MODEL_FILE)
    load_state_dict_checked(model, state, directory / MODEL_FILE)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval(), config


def save_model_dir(directory: str | Path, model: nn.Module, config: Mapping[str, Any]) -> Path:
    """Writes ``directory/model.safetensors`` and ``directory/config.yaml``, each atomically.

    Args:
        directory: created if missing.
        model: a model from ``build_model`` (it carries a ``ModelSpec``), possibly wrapped
            in DDP.
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


def dataset_info(config: Mapping[str, Any]) -> DatasetInfo:
    """The categories a model directory's model predicts."""
    return DatasetInfo.from_dict(config["data"])


def checkpoint_size(
    config: Mapping[str, Any], default: int = DEFAULT_SIZE
) -> int | tuple[int, int]:
    """The canvas a model was evaluated at: ``input.eval_size``, else ``input.crop``."""
    section = config.get("input") or {}
    size = section.get("eval_size") or section.get("crop")
    return default if size is None else (size if isinstance(size, int) else tuple(size))


def model_config(model: nn.Module) -> dict[str, Any]:
    """``{"name", "build_kwargs"}``: enough for ``build_model`` to rebuild ``model``."""
    spec = model_spec(unwrap_model(model))
    return {"name": spec.name, "build_kwargs": to_plain(spec.kwargs)}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside ``DistributedDataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def read_model_config(path: str | Path) -> dict[str, Any]:
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
