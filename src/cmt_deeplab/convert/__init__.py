"""Checkpoints of other frameworks -> our models.

deeplab2 (TensorFlow): :func:`convert_deeplab2` (the whole path, used by
``cmt-deeplab convert deeplab2``), :func:`convert_state_dict` (a checkpoint -> a state dict for
a model you built, with a :class:`ConversionReport` of loaded / new / skipped / unused tensors),
:class:`TFCheckpoint` (reads TF2 checkpoints without TensorFlow) and
:func:`resolve_checkpoint` (prefix, folder, ``.tar.gz`` or a published name).
"""

from cmt_deeplab.convert.archives import ARCHIVES, resolve_checkpoint
from cmt_deeplab.convert.converter import ConversionError, ConversionReport, convert_state_dict
from cmt_deeplab.convert.deeplab2 import build_for_checkpoint, convert_deeplab2
from cmt_deeplab.convert.tf_bundle import CheckpointError, TFCheckpoint

__all__ = [
    "ARCHIVES", "CheckpointError", "ConversionError", "ConversionReport", "TFCheckpoint",
    "build_for_checkpoint", "convert_deeplab2", "convert_state_dict", "resolve_checkpoint",
]
