"""``LossConfig``: the weight and the options of every loss term (the ``loss`` config section)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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
