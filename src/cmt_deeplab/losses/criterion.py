"""The full MaX-DeepLab / CMT-DeepLab training objective (fact sheet §6).

``PanopticCriterion`` matches the final output to the ground truth once, then applies every
term to the final output and to each ``aux_outputs[i]`` with that same permutation (deep
supervision, §6.7). The PQ-style weights (matched dice, void ratio, matched class
probability) also come from the final output only, as in deeplab2. The semantic loss is
computed once, on the final output; the mask-approximation loss on every output that has
``ref_mu`` (the CMT layers).

Every returned term is already multiplied by its weight (and auxiliary terms by
``aux_weight``), so ``loss`` is their plain sum, as deeplab2 reports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cmt_deeplab.losses.instance_discrimination import (
    instance_discrimination_loss,
    pixel_contrastive_loss,
)
from cmt_deeplab.losses.mask_approximation import mask_approximation_loss, mask_moments
from cmt_deeplab.losses.mask_id_loss import mask_id_loss, pixel_target_slot
from cmt_deeplab.losses.matcher import HungarianMatcher, slot_for_gt
from cmt_deeplab.losses.pq_loss import (
    PQLossWeights,
    pq_class_loss,
    pq_dice_loss,
    pq_loss_weights,
)
from cmt_deeplab.losses.semantic_loss import semantic_loss
from cmt_deeplab.losses.targets import PanopticTargets, build_targets, repeat_batch


@dataclass
class LossConfig:
    """Weights and options of every loss term (defaults: MaX-DeepLab / CMT-DeepLab COCO).

    Attributes:
        pq_weight: PQ-style loss weight (class and dice terms).
        alpha: focal alpha: positives x alpha, void targets x (1 - alpha).
        mask_id_weight: mask-ID cross-entropy weight.
        mask_id_topk: fraction of hardest pixels kept by the mask-ID loss.
        instance_weight: instance-discrimination weight.
        instance_temperature: tau of the feature similarities.
        instance_sample_k: pixels sampled by the pixel-contrastive variant; 0 selects the
            MaX-DeepLab original (thing pixels vs mask prototypes).
        instance_sample_temperature: T_s of the area-balanced sampling (COCO kMaX: 1.5).
        semantic_weight: auxiliary semantic loss weight (0 turns it off).
        semantic_topk: fraction of hardest pixels kept (Cityscapes kMaX: 0.2).
        semantic_sample_k: if > 0, area-balanced sampled pixels for the semantic loss.
        semantic_sample_temperature: sampling temperature of the semantic loss.
        mask_approx_weight: CMT mask-approximation weight ([R]: the paper's value is unknown).
        aux_weight: multiplier of every auxiliary-output term.
        mask_stride: stride of ``pred_masks`` w.r.t. the input (ground truth slicing).
    """

    pq_weight: float = 3.0
    alpha: float = 0.75
    mask_id_weight: float = 0.3
    mask_id_topk: float = 1.0
    instance_weight: float = 1.0
    instance_temperature: float = 0.3
    instance_sample_k: int = 4096
    instance_sample_temperature: float = 0.6
    semantic_weight: float = 1.0
    semantic_topk: float = 1.0
    semantic_sample_k: int = 0
    semantic_sample_temperature: float = 1.0
    mask_approx_weight: float = 1.0
    aux_weight: float = 1.0
    mask_stride: int = 4

    def __post_init__(self) -> None:
        for name in (
            "pq_weight",
            "mask_id_weight",
            "instance_weight",
            "semantic_weight",
            "mask_approx_weight",
            "aux_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"LossConfig.alpha must lie in [0, 1], got {self.alpha}")
        for name in ("mask_id_topk", "semantic_topk"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"LossConfig.{name} must lie in (0, 1], got {getattr(self, name)}")
        for name in (
            "instance_temperature",
            "instance_sample_temperature",
            "semantic_sample_temperature",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"LossConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("instance_sample_k", "semantic_sample_k"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.mask_stride < 1:
            raise ValueError(f"LossConfig.mask_stride must be >= 1, got {self.mask_stride}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossConfig:
        """Builds a config from a mapping (e.g. a YAML section); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown loss options {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: At most this many bytes of outputs are stacked into one pass of the per-output terms.
_STACK_BYTES = 64 << 20


class PanopticCriterion(nn.Module):
    """Computes every loss term of one batch.

    Args:
        num_classes: ``K`` thing + stuff classes (``pred_logits`` has ``K + 1`` channels).
        config: weights and options (defaults to ``LossConfig()``).
        generator: RNG of the pixel sampling (reproducible losses when seeded).
    """

    def __init__(
        self,
        num_classes: int,
        config: LossConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.config = config if config is not None else LossConfig()
        self.generator = generator
        self.matcher = HungarianMatcher()

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]] | PanopticTargets,
    ) -> dict[str, Tensor]:
        """Computes the losses.

        Args:
            outputs: the model-output dict (``pred_logits [B, N, K+1]``,
                ``pred_masks [B, N, h, w]``, ``pixel_feature [B, D, h, w]``, optional
                ``semantic_logits [B, K, h, w]``, ``aux_outputs``, ``ref_mu``/``ref_sigma``).
            targets: ``B`` dataset samples (full resolution) or prebuilt ``PanopticTargets``.

        Returns:
            Scalar tensors: ``loss_pq_class``, ``loss_pq_dice``, ``loss_mask_id``,
            ``loss_instance``, ``loss_semantic``, ``loss_mask_approx`` (each only when its
            weight is > 0 and, for mask-approx, ``ref_mu`` is present), ``aux_{i}_<term>``
            for each auxiliary output, and the total ``loss``.

        Raises:
            FloatingPointError: non-finite model outputs before matching, or a non-finite term.
        """
        cfg = self.config
        aux_outputs = list(outputs.get("aux_outputs", []))
        self._check_shapes(outputs, aux_outputs)
        pred_masks = outputs["pred_masks"]
        batch_size = pred_masks.shape[0]
        if not isinstance(targets, PanopticTargets):
            if len(targets) != batch_size:
                raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
            targets = build_targets(targets, stride=cfg.mask_stride, device=pred_masks.device)
        self._check_targets(targets, pred_masks)

        # Softmaxes over 128 slots, dice ratios and 4096 x 4096 similarities need float32:
        # never let a surrounding autocast region run them in half precision.
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            losses = self._all_losses(outputs, aux_outputs, targets)

        values = torch.stack(list(losses.values()))
        if not bool(torch.isfinite(values).all()):  # one device sync for all terms
            name, value = next((n, v) for n, v in losses.items() if not torch.isfinite(v))
            raise FloatingPointError(f"loss term {name!r} is not finite ({value.item()})")
        losses["loss"] = values.sum()
        return losses

    def _all_losses(
        self, outputs: Mapping[str, Any], aux_outputs: list, targets: PanopticTargets
    ) -> dict[str, Tensor]:
        """Matches the final output once and applies every term to every output."""
        cfg = self.config
        pred_masks = outputs["pred_masks"]
        matches = self.matcher(outputs, targets)
        slots = slot_for_gt(matches, targets.gt_labels.shape[1], pred_masks.device)
        weights = pq_loss_weights(outputs["pred_logits"], pred_masks, targets, slots)
        target_slot = pixel_target_slot(targets, slots)
        needs_moments = cfg.mask_approx_weight > 0 and any(
            "ref_mu" in out for out in [outputs, *aux_outputs]
        )
        moments = mask_moments(targets) if needs_moments else None

        everything = [outputs, *aux_outputs]
        prefixes = [""] + [f"aux_{index}_" for index in range(len(aux_outputs))]
        scales = [1.0] + [cfg.aux_weight] * len(aux_outputs)
        per_output = self._per_output_terms(everything, targets, slots, weights, target_slot)
        losses: dict[str, Tensor] = {}
        for output, terms, prefix, scale in zip(everything, per_output, prefixes, scales,
                                                strict=True):
            if moments is not None and "ref_mu" in output:
                terms["loss_mask_approx"] = cfg.mask_approx_weight * mask_approximation_loss(
                    output["ref_mu"], output["ref_sigma"], *moments, slots
                )
            losses.update({prefix + name: scale * value for name, value in terms.items()})
        if cfg.semantic_weight > 0:
            semantic = semantic_loss(
                outputs["semantic_logits"],
                targets,
                top_k=cfg.semantic_topk,
                sample_k=cfg.semantic_sample_k,
                sample_temperature=cfg.semantic_sample_temperature,
                generator=self.generator,
            )
            losses["loss_semantic"] = cfg.semantic_weight * semantic.mean()
        return losses

    def _per_output_terms(
        self,
        outputs: list[Mapping[str, Tensor]],
        targets: PanopticTargets,
        slots: Tensor,
        weights: PQLossWeights,
        target_slot: Tensor,
    ) -> list[dict[str, Tensor]]:
        """The weighted class, dice, mask-ID and instance terms of every output (unscaled by
        ``aux_weight``), one dict per output.

        Every term is per image and every output uses the same targets and permutation, so
        outputs of equal shapes are stacked along the batch (``[L x B, ...]``) and each term
        runs once for all of them: the same values as one output at a time, with a quarter of
        the kernel launches and autograd nodes for a four-layer decoder (the tiny CPU step is
        bound by those). Stacking copies the outputs, so only up to ``_STACK_BYTES`` of them
        go together: at COCO crops (~70 MB of masks and features per image and output) each
        output is still computed alone, where launches do not matter.
        """
        keys = ["pred_logits", "pred_masks"]
        if self.config.instance_weight > 0:
            keys.append("pixel_feature")
        groups: dict[tuple, list[int]] = {}
        for index, output in enumerate(outputs):
            groups.setdefault(tuple(tuple(output[key].shape) for key in keys), []).append(index)
        terms: list[dict[str, Tensor]] = [{} for _ in outputs]
        chunks = []
        for members in groups.values():
            size = sum(outputs[members[0]][key].nbytes for key in keys)
            per_chunk = max(1, _STACK_BYTES // size)
            chunks += [members[i:i + per_chunk] for i in range(0, len(members), per_chunk)]
        for members in chunks:
            count = len(members)
            stacked = {key: torch.cat([outputs[i][key] for i in members]) for key in keys}
            values = self._batch_terms(
                stacked, targets.repeat(count), repeat_batch(slots, count), weights.repeat(count),
                repeat_batch(target_slot, count),
            )
            for name, value in values.items():
                for i, per_output in zip(members, value.view(count, -1).mean(1), strict=True):
                    terms[i][name] = per_output
        return terms

    def _batch_terms(
        self,
        output: Mapping[str, Tensor],
        targets: PanopticTargets,
        slots: Tensor,
        weights: PQLossWeights,
        target_slot: Tensor,
    ) -> dict[str, Tensor]:
        """Per-image weighted terms ``[B']`` of one (possibly stacked) output."""
        cfg = self.config
        terms: dict[str, Tensor] = {}
        if cfg.pq_weight > 0:
            terms["loss_pq_class"] = cfg.pq_weight * pq_class_loss(
                output["pred_logits"], weights, cfg.alpha
            )
            terms["loss_pq_dice"] = cfg.pq_weight * pq_dice_loss(
                output["pred_masks"], targets, slots, weights, cfg.alpha
            )
        if cfg.mask_id_weight > 0:
            terms["loss_mask_id"] = cfg.mask_id_weight * mask_id_loss(
                output["pred_masks"], target_slot, cfg.mask_id_topk
            )
        if cfg.instance_weight > 0:
            if cfg.instance_sample_k > 0:
                instance = pixel_contrastive_loss(
                    output["pixel_feature"],
                    targets,
                    cfg.instance_temperature,
                    cfg.instance_sample_k,
                    cfg.instance_sample_temperature,
                    self.generator,
                )
            else:
                instance = instance_discrimination_loss(
                    output["pixel_feature"], targets, cfg.instance_temperature
                )
            terms["loss_instance"] = cfg.instance_weight * instance
        return terms

    def _check_shapes(self, outputs: Mapping[str, Any], aux_outputs: list) -> None:
        cfg = self.config
        required = ["pred_logits", "pred_masks"]
        if cfg.instance_weight > 0:
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
            "pred_logits": (batch_size, num_slots, self.num_classes + 1),
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
        if cfg.semantic_weight > 0:
            if "semantic_logits" not in outputs:
                raise KeyError(
                    "outputs lack 'semantic_logits' (the model returns them in training mode "
                    "only); set LossConfig.semantic_weight = 0 to train without them"
                )
            actual = tuple(outputs["semantic_logits"].shape)
            if actual != (batch_size, self.num_classes, h, w):
                raise ValueError(
                    f"outputs['semantic_logits'] has shape {actual}, expected "
                    f"{(batch_size, self.num_classes, h, w)}"
                )

    def _check_targets(self, targets: PanopticTargets, pred_masks: Tensor) -> None:
        h, w = pred_masks.shape[-2:]
        if targets.mask_size != (h, w) or targets.batch_size != pred_masks.shape[0]:
            raise ValueError(
                f"ground truth at mask resolution is {targets.batch_size} x "
                f"{targets.mask_size}, but pred_masks is {tuple(pred_masks.shape)}; the "
                f"targets are sliced with stride {self.config.mask_stride} "
                "(LossConfig.mask_stride), so h must be ceil(H / stride)"
            )
        labels = targets.gt_labels[targets.gt_valid]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"ground-truth mask labels span [{int(labels.min())}, {int(labels.max())}], "
                f"outside the model's {self.num_classes} classes"
            )
        semantic = targets.semantic
        if semantic.numel() and (
            int(semantic.min()) < -1 or int(semantic.max()) >= self.num_classes
        ):
            raise ValueError(
                f"semantic labels span [{int(semantic.min())}, {int(semantic.max())}], "
                f"outside [-1, {self.num_classes - 1}]"
            )
