"""Model directories: a trained model as ``model.safetensors`` + ``config.yaml``.

    model = cmt_deeplab.load_model("runs/coco")            # nn.Module in eval mode
    model, config = load_model_dir("runs/coco", "cuda")    # and its config.yaml

A model directory is what ``train`` writes at the end of a run (and into every training
state), and what ``predict``, ``evaluate``, ``visualize``, the demo and
``Predictor.from_checkpoint`` read::

    DIR/model.safetensors   state dict, parameters and buffers (safetensors: no pickle)
    DIR/config.yaml         model: {name, build_kwargs}, data: DatasetInfo.to_dict(),
                            input: {crop, eval_size}, train: the full training config,
                            weights_sha256: the SHA-256 of model.safetensors

Both files are written atomically, the weights first. safetensors has no checksum of its
own, so a file whose tensor bytes were overwritten would load as NaN or garbage weights:
loading checks the digest and refuses a mismatch, naming the file (directories written
before the digest existed load unchecked).

Loading checks ``config.yaml`` (sections, categories, sizes; every error names the file),
then builds the model on the ``meta`` device and compares its tensor names and shapes with
the file's header, so a config asking for absurd sizes (10^9 classes) is refused before any
memory is allocated; only then is the model built and the weights loaded strictly, with one
error that lists every mismatch.
"""

from __future__ import annotations

import hashlib
import json
import struct
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
from cmt_deeplab.utils.size import parse_size

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
#: The ``config.yaml`` key holding the SHA-256 (hex) of ``model.safetensors``.
DIGEST_KEY = "weights_sha256"
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
    data = read_weights_bytes(directory / MODEL_FILE, config.get(DIGEST_KEY))
    # Shapes first, on the meta device: a config asking for 10^9 classes fails here, not
    # in an allocation of the real model.
    with torch.device("meta"):
        skeleton = _build_from_config(config, directory / CONFIG_FILE)
    check_state_shapes(skeleton, safetensors_shapes(data, directory / MODEL_FILE),
                       directory / MODEL_FILE)
    del skeleton
    model = _build_from_config(config, directory / CONFIG_FILE)
    state = _parse_safetensors(data, directory / MODEL_FILE)
    load_state_dict_checked(model, state, directory / MODEL_FILE)
    device = torch.device(device) if device is not None else torch.device("cpu")
    return model.to(device).eval(), config


def _build_from_config(config: Mapping[str, Any], source: Path) -> nn.Module:
    section = config["model"]
    try:
        return build_model(section["name"], **dict(section.get("build_kwargs") or {}))
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(f"{source}: cannot build the model: {error}") from None


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
    weights = _state_dict_bytes(unwrap_model(model))
    document[DIGEST_KEY] = hashlib.sha256(weights).hexdigest()
    atomic_write_bytes(directory / MODEL_FILE, weights)
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
    kwargs = model.get("build_kwargs", {}) or {}
    if not isinstance(kwargs, dict):
        raise ValueError(f"checkpoint config {path}: model.build_kwargs is not a mapping")
    if not isinstance(config.get("data"), dict):
        raise ValueError(f"checkpoint config {path} lacks its 'data' section (the categories "
                         f"the model predicts), got {config.get('data')!r}")
    try:
        info = DatasetInfo.from_dict(config["data"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        detail = f"missing key {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"checkpoint config {path}: bad 'data' section: {detail}") from None
    for key, expected in (("num_classes", info.num_classes),
                          ("num_thing_classes", info.num_thing_classes)):
        if key in kwargs and kwargs[key] != expected:
            raise ValueError(f"checkpoint config {path}: model.build_kwargs.{key} is "
                             f"{kwargs[key]!r} but the 'data' section lists {expected}")
    section = config.get("input") or {}
    if not isinstance(section, dict):
        raise ValueError(f"checkpoint config {path}: 'input' is not a mapping: {section!r}")
    for key in ("crop", "eval_size"):
        if section.get(key) is not None:
            try:
                parse_size(section[key], f"input.{key}")
            except ValueError as error:
                raise ValueError(f"checkpoint config {path}: {error}") from None
    digest = config.get(DIGEST_KEY)
    if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
        raise ValueError(f"checkpoint config {path}: {DIGEST_KEY} is not a SHA-256 hex "
                         f"digest: {digest!r}")
    return config


def read_safetensors(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (CPU), checked against ``sha256`` when given;
    errors name the file."""
    path = Path(path)
    return _parse_safetensors(read_weights_bytes(path, sha256), path)


def read_weights_bytes(path: str | Path, sha256: str | None = None) -> bytes:
    """The bytes of a weights file; with ``sha256`` (hex), a ``ValueError`` naming the file
    and both digests when they differ (the file was damaged or replaced after saving)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {path}") from None
    except OSError as error:
        raise ValueError(f"cannot read weights file {path}: {error}") from None
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"corrupt or truncated weights file {path}: its SHA-256 is {actual}, "
                             f"not {sha256} as recorded when it was saved (damaged or "
                             "replaced since)")
    return data


def safetensors_shapes(data: bytes, source: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (8-byte length + JSON), no tensor read."""
    try:
        (length,) = struct.unpack_from("<Q", data, 0)
        if length > len(data) - 8:
            raise ValueError(f"header length {length} exceeds the file size {len(data)}")
        header = json.loads(data[8:8 + length])
        return {name: tuple(int(n) for n in entry["shape"]) for name, entry in header.items()
                if name != "__metadata__"}
    except (struct.error, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"corrupt or truncated weights file {source}: bad header "
                         f"({error})") from None


def _parse_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ValueError(f"corrupt or truncated weights file {path}: {error}") from None


def load_state_dict_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path
) -> None:
    """``model.load_state_dict(state, strict=True)`` with one error listing every mismatch."""
    model = unwrap_model(model)
    check_state_shapes(model, {key: tuple(value.shape) for key, value in state.items()}, source)
    model.load_state_dict(dict(state), strict=True)


def check_state_shapes(
    model: nn.Module, shapes: Mapping[str, tuple[int, ...]], source: str | Path
) -> None:
    """One ``ValueError`` listing every missing / unexpected key and shape mismatch between
    ``model``'s state dict (possibly on the meta device) and ``shapes`` read from ``source``."""
    model = unwrap_model(model)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    mismatched = [
        f"{key}: file {shapes[key]} vs model {expected[key]}"
        for key in expected
        if key in shapes and shapes[key] != expected[key]
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
