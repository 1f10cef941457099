"""Checks of the criterion's inputs: the model outputs it reads and the ground truth.

Errors a caller can cause (a model that does not follow the output contract, targets at the
wrong stride, labels outside the model's classes) are raised here with the offending key and
shape named, before any loss is computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from cmt_deeplab.losses.config import LossConfig
from cmt_deeplab.losses.targets import PanopticTargets


def check_outputs(
    outputs: Mapping[str, Any], aux_outputs: list, num_classes: int, config: LossConfig
) -> None:
    """Every output the configured terms read is there, with shapes that fit each other.

    Raises:
        KeyError: a missing output (naming it and where).
        ValueError: a shape that does not fit, naming the output and the expected shape.
    """
    required = ["pred_logits", "pred_masks"]
    if config.instance_weight > 0:
        required.append("pixel_feature")
    named = [("outputs", outputs)] + [
        (f"outputs['aux_outputs'][{i}]", aux) for i, aux in enumerate(aux_outputs)
    ]
    for where, out in named:
        for key in required:
            if key not in out:
                raise KeyError(f"{where} lacks {key!r}")
        if "ref_mu" in out and "ref_sigma" not in out:
            raise KeyError(f"{where} has 'ref_mu' but lacks 'ref_sigma'")
    pred_masks = outputs["pred_masks"]
    if pred_masks.dim() != 4:
        raise ValueError(
            f"outputs['pred_masks'] must be [B, N, h, w], got {tuple(pred_masks.shape)}"
        )
    batch_size, num_slots, h, w = pred_masks.shape
    expected = {
        "pred_logits": (batch_size, num_slots, num_classes + 1),
        "pred_masks": (batch_size, num_slots, h, w),
        "pixel_feature": (batch_size, None, h, w),
        "ref_mu": (batch_size, num_slots, 2),
        "ref_sigma": (batch_size, num_slots, 2),
    }
    for where, out in named:
        for key, shape in expected.items():
            if key not in out:
                continue
            actual = tuple(out[key].shape)
            if len(actual) != len(shape) or any(
                s is not None and s != a for s, a in zip(shape, actual, strict=True)
            ):
                want = tuple("D" if s is None else s for s in shape)
                raise ValueError(f"{where}[{key!r}] has shape {actual}, expected {want}")
    if config.semantic_weight > 0:
        if "semantic_logits" not in outputs:
            raise KeyError(
                "outputs lack 'semantic_logits' (the model returns them in training mode "
                "only); set LossConfig.semantic_weight = 0 to train without them"
            )
        actual = tuple(outputs["semantic_logits"].shape)
        if actual != (batch_size, num_classes, h, w):
            raise ValueError(
                f"outputs['semantic_logits'] has shape {actual}, expected "
                f"{(batch_size, num_classes, h, w)}"
            )


def check_targets(
    targets: PanopticTargets, pred_masks: Tensor, num_classes: int, mask_stride: int
) -> None:
    """The ground truth fits the predictions: its mask resolution and its class range."""
    h, w = pred_masks.shape[-2:]
    if targets.mask_size != (h, w) or targets.batch_size != pred_masks.shape[0]:
        raise ValueError(
            f"ground truth at mask resolution is {targets.batch_size} x "
            f"{targets.mask_size}, but pred_masks is {tuple(pred_masks.shape)}; the "
            f"targets are sliced with stride {mask_stride} "
            "(LossConfig.mask_stride), so h must be ceil(H / stride)"
        )
    labels = targets.gt_labels[targets.gt_valid]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"ground-truth mask labels span [{int(labels.min())}, {int(labels.max())}], "
            f"outside the model's {num_classes} classes"
        )
    semantic = targets.semantic
    if semantic.numel() and (
        int(semantic.min()) < -1 or int(semantic.max()) >= num_classes
    ):
        raise ValueError(
            f"semantic labels span [{int(semantic.min())}, {int(semantic.max())}], "
            f"outside [-1, {num_classes - 1}]"
        )
