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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cmt_deeplab.losses.config import LossConfig
from cmt_deeplab.losses.input_checks import check_outputs, check_targets
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
from cmt_deeplab.losses.recompute import recompute_terms
from cmt_deeplab.losses.semantic_loss import semantic_loss
from cmt_deeplab.losses.stacking import stacked_terms
from cmt_deeplab.losses.targets import PanopticTargets, build_targets, repeat_batch


class PanopticCriterion(nn.Module):
    """Computes every loss term of one batch.

    Args:
        num_classes: ``K`` thing + stuff classes (``pred_logits`` has ``K + 1`` channels).
        config: weights and options (defaults to ``LossConfig()``).
        generator: RNG of the pixel sampling (reproducible losses when seeded).
        recompute: recompute the per-output terms' intermediates in backward instead of
            keeping them (``losses.recompute``; same values and gradients, less memory).
    """

    def __init__(
        self,
        num_classes: int,
        config: LossConfig | None = None,
        generator: torch.Generator | None = None,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        self.recompute = recompute
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
        check_outputs(outputs, aux_outputs, self.num_classes, cfg)
        pred_masks = outputs["pred_masks"]
        batch_size = pred_masks.shape[0]
        if not isinstance(targets, PanopticTargets):
            if len(targets) != batch_size:
                raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images")
            targets = build_targets(targets, stride=cfg.mask_stride, device=pred_masks.device)
        check_targets(targets, pred_masks, self.num_classes, cfg.mask_stride)

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
        ``aux_weight``), one dict per output; outputs of equal shapes in one pass
        (``losses.stacking``)."""
        keys = ["pred_logits", "pred_masks"]
        if self.config.instance_weight > 0:
            keys.append("pixel_feature")

        def batch_terms(stacked: dict[str, Tensor], count: int) -> dict[str, Tensor]:
            def terms(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
                return self._batch_terms(
                    inputs, targets.repeat(count), repeat_batch(slots, count),
                    weights.repeat(count), repeat_batch(target_slot, count),
                )

            if self.recompute and torch.is_grad_enabled() and any(
                    value.requires_grad for value in stacked.values()):
                return recompute_terms(terms, stacked, self.generator)
            return terms(stacked)

        return stacked_terms(outputs, keys, batch_terms)

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
