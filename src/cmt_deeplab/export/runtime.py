"""Running an exported graph: ``load_exported(FILE)`` -> a module that follows the model
output contract (``pred_logits``, ``pred_masks``, ``pixel_feature``, or the panoptic outputs),
so ``inference.Predictor`` runs it as it runs the PyTorch model:

    model = load_exported("cmt_s.onnx")              # onnxruntime, CPU
    predictor = Predictor(model, model.sidecar.info, size=model.sidecar.size, optimize=False)

Every input shape is checked against the sidecar first: a shape the graph was not exported
for is a ``ValueError`` naming both, never a wrong map. A fixed-batch graph takes any batch,
run in chunks of its batch size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmt_deeplab.export.sidecar import MODEL_DIGEST_KEY, Sidecar, sidecar_path

BACKENDS = ("onnxruntime", "torch-export")


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class ExportedModel(nn.Module):
    """An exported graph behind the model's call: ``images [B, 3, H, W] -> dict``."""

    def __init__(self, model_file: str | Path, num_threads: int | None = None) -> None:
        super().__init__()
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"exported model not found: {self.model_file}")
        self.sidecar = Sidecar.load(self.model_file)
        self.num_threads = num_threads
        expected = self.sidecar.extra.get(MODEL_DIGEST_KEY)  # exports before it: unchecked
        if expected is not None:
            actual = hashlib.sha256(self.model_file.read_bytes()).hexdigest()
            if actual != expected:
                raise ValueError(
                    f"exported model {self.model_file} is corrupt or was replaced: its SHA-256 "
                    f"is {actual}, not {expected} as recorded in {sidecar_path(self.model_file)}")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        self.sidecar.check_input_shape(tuple(images.shape), any_batch=True)
        return self._run(images.float().contiguous())

    def _run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        fixed = self.sidecar.batch.maximum
        if fixed is None or images.shape[0] == fixed:
            outputs = self.run_graph(images)
            return dict(zip(self.sidecar.output_names, outputs, strict=True))
        chunks = []
        for start in range(0, images.shape[0], fixed):
            chunk = images[start:start + fixed]
            count = chunk.shape[0]
            if count < fixed:  # the last chunk is padded to the graph's batch, then cut
                chunk = torch.cat([chunk, chunk.new_zeros(fixed - count, *chunk.shape[1:])])
            chunks.append([output[:count] for output in self.run_graph(chunk)])
        return {name: torch.cat([chunk[i] for chunk in chunks])
                for i, name in enumerate(self.sidecar.output_names)}

    def run_graph(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError


class OnnxRuntimeModel(ExportedModel):
    """An ONNX file run by onnxruntime on the CPU."""

    def __init__(self, model_file: str | Path, num_threads: int | None = None) -> None:
        super().__init__(model_file, num_threads)
        if self.sidecar.format != "onnx":
            raise ValueError(f"{self.model_file} is a {self.sidecar.format} export, not ONNX")
        try:
            self.runner = open_onnxruntime(self.model_file, num_threads)
        except ImportError:
            raise
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
            raise ValueError(f"onnxruntime cannot load {self.model_file}: {error}") from None

    def run_graph(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.runner.run(None, {self.sidecar.input_name: images.cpu().numpy()})
        return [torch.from_numpy(np.asarray(output)) for output in outputs]


class TorchExportModel(ExportedModel):
    """A ``torch.export`` program (``torch.export.save``) run by PyTorch."""

    def __init__(self, model_file: str | Path, num_threads: int | None = None) -> None:
        super().__init__(model_file, num_threads)
        if self.sidecar.format != "torch-export":
            raise ValueError(f"{self.model_file} is a {self.sidecar.format} export, "
                             "not torch-export")
        try:
            self.program = torch.export.load(str(self.model_file)).module()
        except Exception as error:  # noqa: BLE001 - any unreadable program
            raise ValueError(f"cannot load the torch.export program {self.model_file}: "
                             f"{error}") from None

    def run_graph(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(self.program(images))


def load_exported(model_file: str | Path, num_threads: int | None = None) -> ExportedModel:
    """The runner for ``model_file`` by its sidecar's format."""
    sidecar = Sidecar.load(model_file)
    runner = OnnxRuntimeModel if sidecar.format == "onnx" else TorchExportModel
    return runner(model_file, num_threads)


def open_onnxruntime(model_file: str | Path, num_threads: int | None = None,
                     profile_prefix: str | None = None) -> Any:
    """onnxruntime's CPU runner of ``model_file``: ``num_threads`` intra-op threads and one
    inter-op thread (onnxruntime's defaults otherwise); with ``profile_prefix``, its profiler on
    (``end_profiling()`` writes the trace there)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("the onnxruntime backend needs onnxruntime: "
                          "pip install 'cmt-deeplab[export]'") from None

    options = onnxruntime.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(str(model_file), options,
                                        providers=["CPUExecutionProvider"])
