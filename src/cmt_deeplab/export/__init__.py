"""Export to ONNX and ``torch.export``, and running the exported graphs (onnxruntime)."""

from cmt_deeplab.export.exporter import FORMATS, export_model
from cmt_deeplab.export.graph_outputs import (
    NETWORK_OUTPUTS,
    PANOPTIC_OUTPUTS,
    NetworkGraph,
    PanopticGraph,
)
from cmt_deeplab.export.runtime import (
    ExportedModel,
    OnnxRuntimeModel,
    TorchExportModel,
    load_exported,
    onnxruntime_available,
)
from cmt_deeplab.export.sidecar import AxisRange, Sidecar, sidecar_path

__all__ = [
    "FORMATS",
    "NETWORK_OUTPUTS",
    "PANOPTIC_OUTPUTS",
    "AxisRange",
    "ExportedModel",
    "NetworkGraph",
    "OnnxRuntimeModel",
    "PanopticGraph",
    "Sidecar",
    "TorchExportModel",
    "export_model",
    "load_exported",
    "onnxruntime_available",
    "sidecar_path",
]
