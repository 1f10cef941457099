"""``export_model``: a model directory (or a built model) -> an ONNX file or a ``torch.export``
program, with its sidecar JSON.

    export_model("runs/cmt_s", "cmt_s.onnx", size=641)                      # fixed shape
    export_model("runs/cmt_s", "cmt_s.pt2", format="torch-export", dynamic_batch=True)

Both formats trace the same graph with ``torch.export`` (ONNX through ``torch.onnx.export``'s
dynamo exporter): an inference copy of the model (``inference.fast.optimize_for_inference``:
BNs folded, eval mode, so no drop path and no auxiliary semantic branch), returning the
network outputs or, with ``post_processing``, the panoptic map (``graph_outputs``).
A fixed-size graph accepts the traced size only; ``dynamic_size`` lets height and width be any
``32k + 1`` (the paper's crops: 513, 641, 1025, ...); ``dynamic_batch`` any batch size.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.export.graph_outputs import (
    NETWORK_OUTPUTS,
    PANOPTIC_OUTPUTS,
    NetworkGraph,
    PanopticGraph,
)
from cmt_deeplab.export.sidecar import MODEL_DIGEST_KEY, SIZE_STEP, AxisRange, Sidecar
from cmt_deeplab.inference.fast import optimize_for_inference
from cmt_deeplab.model_dir import checkpoint_size, dataset_info, load_model_dir, model_config
from cmt_deeplab.utils.io import atomic_write_with
from cmt_deeplab.utils.size import parse_size

FORMATS = ("onnx", "torch-export")
INPUT_NAME = "images"
#: Largest dynamic height / width, in steps of 32 (2049 pixels).
MAX_SIZE_STEPS = 64
#: ONNX opset of the dynamo exporter's output.
OPSET = 18
#: Loggers that report, at WARNING, what does not concern this model (torchvision's ops are
#: not registered; a multi-output Split is not constant-folded).
_CHATTY_LOGGERS = ("torch.onnx._internal.exporter._registration",
                   "onnxscript.optimizer._constant_folding")


def export_model(
    source: str | Path | nn.Module,
    out: str | Path,
    format: str = "onnx",
    size: int | tuple[int, int] | str | None = None,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    post_processing: bool = False,
    info: DatasetInfo | None = None,
    class_threshold: float = 0.7,
    pixel_threshold: float = 0.4,
) -> Sidecar:
    """Exports ``source`` to ``out`` and writes ``out.json``; returns the sidecar.

    Args:
        source: a model directory (``model.safetensors`` + ``config.yaml``), or a model from
            ``build_model`` (then ``info`` is required).
        out: the file to write (``.onnx`` / ``.pt2`` by convention); written atomically.
        format: ``"onnx"`` or ``"torch-export"`` (``torch.export.save``).
        size: the traced input size ``S`` or ``HxW``; default the checkpoint's canvas.
        dynamic_batch: any batch size (else 1).
        dynamic_size: any ``32k + 1`` height and width up to 2049 (else ``size`` only).
        post_processing: end the graph in the pixel-wise panoptic map (``PanopticGraph``).
        info: the categories, for a built model.
        class_threshold, pixel_threshold: of the post-processing.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {list(FORMATS)}")
    model, info, default_size = _load(source, info)
    height, width = parse_size(size if size is not None else default_size, "size")
    if dynamic_size:
        bad = [v for v in (height, width) if (v - 1) % SIZE_STEP or v < SIZE_STEP + 1]
        if bad:
            raise ValueError(f"--dynamic-size traces at a size {SIZE_STEP}k+1 (e.g. 641); "
                             f"got {height}x{width}")
    model = optimize_for_inference(model.cpu(), channels_last=False)
    graph: nn.Module = (PanopticGraph(model, info, class_threshold, pixel_threshold)
                        if post_processing else NetworkGraph(model))
    graph.eval()
    # A dynamic batch is traced at 2: a batch of 1 would be specialised into the graph.
    example = torch.zeros(2 if dynamic_batch else 1, 3, height, width)
    dynamic_shapes = _dynamic_shapes(dynamic_batch, dynamic_size)

    out = Path(out)
    output_names = list(PANOPTIC_OUTPUTS if post_processing else NETWORK_OUTPUTS)
    with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
        try:
            if format == "onnx":
                program = torch.onnx.export(
                    graph, (example,), dynamo=True, dynamic_shapes=dynamic_shapes,
                    input_names=[INPUT_NAME], output_names=output_names, opset_version=OPSET,
                    verbose=False,
                )
            else:
                program = torch.export.export(graph, (example,), dynamic_shapes=dynamic_shapes,
                                              strict=False)
        except Exception as error:  # noqa: BLE001 - the exporters raise many types
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ValueError(f"cannot export {_model_section(model)['name']} as {format} at "
                             f"{height}x{width}: {type(error).__name__}: {first}") from error
        if format == "onnx":
            atomic_write_with(out, lambda tmp: program.save(tmp, external_data=False))
        else:
            atomic_write_with(out, lambda tmp: torch.export.save(program, tmp))

    steps = AxisRange(SIZE_STEP + 1, SIZE_STEP * MAX_SIZE_STEPS + 1, SIZE_STEP, 1)
    sidecar = Sidecar(
        format=format,
        model=_model_section(model),
        info=info,
        size=(height, width),
        batch=AxisRange(1, None) if dynamic_batch else AxisRange.fixed(1),
        height=steps if dynamic_size else AxisRange.fixed(height),
        width=steps if dynamic_size else AxisRange.fixed(width),
        input_name=INPUT_NAME,
        output_names=output_names,
        post_processing=({"method": "pixelwise", "class_threshold": class_threshold,
                          "pixel_threshold": pixel_threshold,
                          "label_divisor": info.label_divisor} if post_processing else None),
        extra={"torch_version": torch.__version__,
               **({"opset": OPSET} if format == "onnx" else {}),
               # Neither format has a checksum: a damaged graph file may load and run wrong.
               MODEL_DIGEST_KEY: hashlib.sha256(Path(out).read_bytes()).hexdigest()},
    )
    sidecar.save(out)
    return sidecar


def _load(
    source: str | Path | nn.Module, info: DatasetInfo | None
) -> tuple[nn.Module, DatasetInfo, Any]:
    if isinstance(source, nn.Module):
        if info is None:
            raise ValueError("exporting a built model needs its categories (info=DatasetInfo)")
        return source, info, 641
    model, config = load_model_dir(source)
    return model, info or dataset_info(config), checkpoint_size(config)


def _model_section(model: nn.Module) -> dict[str, Any]:
    try:
        return model_config(model)
    except (AttributeError, KeyError, TypeError, ValueError):  # not from build_model
        return {"name": type(model).__name__, "build_kwargs": {}}


def _dynamic_shapes(dynamic_batch: bool, dynamic_size: bool) -> dict[str, Any] | None:
    axes: dict[int, Any] = {}
    if dynamic_batch:
        axes[0] = torch.export.Dim("batch", min=1)
    if dynamic_size:
        rows = torch.export.Dim("rows", min=1, max=MAX_SIZE_STEPS)
        cols = torch.export.Dim("cols", min=1, max=MAX_SIZE_STEPS)
        axes[2], axes[3] = SIZE_STEP * rows + 1, SIZE_STEP * cols + 1
    return {"images": axes} if axes else None


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
