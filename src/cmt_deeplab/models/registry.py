"""The model zoo, timm style: each variant is a registered constructor whose body holds its
numbers; ``build_model(name, **overrides)`` builds one, ``list_models()`` names them, and
``model_spec(model)`` says what a built model was built with (what checkpoints store)."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from cmt_deeplab.models.cmt_deeplab import CMTDeepLab, CMTDeepLabConfig, DecoderStage
from cmt_deeplab.models.max_deeplab import MaXDeepLab, MaXDeepLabConfig
from cmt_deeplab.models.meta_arch import slot_table_rows
from cmt_deeplab.models.rfn import RecursiveCMTDeepLab


@dataclass(frozen=True)
class ModelEntry:
    name: str
    constructor: Callable[..., nn.Module]
    config_class: type
    backbone: str
    paper_params: str
    notes: str


@dataclass(frozen=True)
class ModelSpec:
    """How a model was built: ``build_model(spec.name, **spec.kwargs)`` builds it again.

    ``kwargs`` holds ``num_classes``, ``num_thing_classes``, ``num_slots`` and the overrides
    as they were given (read-only).
    """

    name: str
    kwargs: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    def __reduce__(self) -> tuple:
        # A mapping proxy cannot be pickled or deep-copied (models are, e.g. for inference).
        return ModelSpec, (self.name, dict(self.kwargs))


#: The module attribute that holds a model's ``ModelSpec`` (set by ``attach_model_spec``).
_SPEC_ATTRIBUTE = "_model_spec"

_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, config_class: type, backbone: str, paper_params: str = "-", notes: str = ""
) -> Callable:
    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, fn, config_class, backbone, paper_params, notes)
        return fn

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Registered names, optionally filtered by a shell-style pattern (``"cmt-*"``)."""
    names = list(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(list_models())
        raise ValueError(f"unknown model {name!r}; valid names: {valid}") from None


def build_model(
    name: str,
    num_classes: int = 133,
    num_thing_classes: int = 80,
    num_slots: int = 128,
    **overrides: Any,
) -> nn.Module:
    """Builds a registered model. ``overrides`` replace fields of the variant's config
    (e.g. ``use_pixel_update=False``, ``drop_path_keep_prob=1.0``); unknown keys are errors."""
    entry = model_entry(name)
    if not 0 <= num_thing_classes <= num_classes or num_classes < 1:
        raise ValueError(
            f"need 1 <= num_classes and 0 <= num_thing_classes <= num_classes, got "
            f"num_classes={num_classes}, num_thing_classes={num_thing_classes}"
        )
    fields = {f.name for f in dataclasses.fields(entry.config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) for {name}: {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    given = {"num_classes": num_classes, "num_thing_classes": num_thing_classes,
             "num_slots": num_slots, **overrides}
    # Without ``max_num_slots`` the slot table has exactly ``num_slots`` rows.
    rows = slot_table_rows(num_slots, overrides.get("max_num_slots"))
    model = entry.constructor(**{**given, "max_num_slots": rows})
    return attach_model_spec(model, ModelSpec(name, given))


def attach_model_spec(model: nn.Module, spec: ModelSpec) -> nn.Module:
    """Records ``spec`` on ``model`` (``build_model`` does this); returns ``model``."""
    setattr(model, _SPEC_ATTRIBUTE, spec)
    return model


def model_spec(model: nn.Module) -> ModelSpec:
    """The ``ModelSpec`` of a model from ``build_model`` (unwrap DDP / compiled models first)."""
    spec = getattr(model, _SPEC_ATTRIBUTE, None)
    if not isinstance(spec, ModelSpec):
        raise ValueError(
            f"{type(model).__name__} has no ModelSpec: build it with cmt_deeplab.build_model "
            "so that its name and arguments are known and it can be rebuilt from a checkpoint"
        )
    return spec


def _config(config_class: type, defaults: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    values = {**defaults, **kwargs}
    if "decoder" in values:
        values["decoder"] = tuple(
            s if isinstance(s, DecoderStage) else DecoderStage(**s) if isinstance(s, dict)
            else DecoderStage(*s) for s in values["decoder"]
        )
    for key in ("num_blocks", "backbone_num_blocks", "semantic_projections"):
        if key in values:
            values[key] = tuple(values[key])
    return config_class(**values)


# --- MaX-DeepLab ---------------------------------------------------------------------------


@register_model("max-deeplab-s", MaXDeepLabConfig, "MaX-S (Axial-R50 + transformers)", "61.9M",
                "MaX-DeepLab-S baseline, dual-path transformer")
def max_deeplab_s(**kwargs: Any) -> MaXDeepLab:
    return MaXDeepLab(_config(MaXDeepLabConfig, {}, kwargs))


@register_model("max-deeplab-l", MaXDeepLabConfig, "MaX-L (wide-ResNet-41 + axial)", "451M",
                "MaX-DeepLab-L, stacked decoder")
def max_deeplab_l(**kwargs: Any) -> MaXDeepLab:
    defaults = {
        "num_blocks": (3, 6, 3, 3), "backbone_type": "wider_resnet",
        "backbone_transformer_beyond_stride": 16, "extra_decoder_transformer_beyond_stride": 16,
        "backbone_decoder_num_stacks": 1, "extra_decoder_num_stacks": 1,
        "extra_decoder_blocks_per_stage": 3, "memory_channels": 512,
        "base_transformer_expansion": 2.0, "global_ffn_channels": 512,
        "attention_bottleneck_expansion": 4, "key_expansion": 2.0, "value_expansion": 4.0,
        "drop_path_beyond_stride": 4,
    }
    return MaXDeepLab(_config(MaXDeepLabConfig, defaults, kwargs))


# --- CMT-DeepLab ---------------------------------------------------------------------------


@register_model("cmt-deeplab-s", CMTDeepLabConfig, "Axial-R50", "94.9M",
                "CMT-DeepLab, 9 CMT layers (reconstructed layout R-A)")
def cmt_deeplab_s(**kwargs: Any) -> CMTDeepLab:
    return CMTDeepLab(_config(CMTDeepLabConfig, {}, kwargs))


@register_model("cmt-deeplab-l", CMTDeepLabConfig, "Axial-R104", "135.2M",
                "CMT-DeepLab, 4x stage-4 blocks")
def cmt_deeplab_l(**kwargs: Any) -> CMTDeepLab:
    return CMTDeepLab(_config(CMTDeepLabConfig, {"backbone_num_blocks": (3, 4, 24, 3)}, kwargs))


@register_model("cmt-deeplab-l-rfn", CMTDeepLabConfig, "Axial-R104-RFN", "270.3M",
                "two CMT-L nets, shared cluster centres")
def cmt_deeplab_l_rfn(**kwargs: Any) -> RecursiveCMTDeepLab:
    return RecursiveCMTDeepLab(
        _config(CMTDeepLabConfig, {"backbone_num_blocks": (3, 4, 24, 3)}, kwargs)
    )


@register_model("cmt-deeplab-r50", CMTDeepLabConfig, "ResNet-50 (deeplab2)", "-",
                "CMT head on a plain ResNet-50 (Table 3); ours: 76,983,108")
def cmt_deeplab_r50(**kwargs: Any) -> CMTDeepLab:
    defaults = {"backbone_type": "resnet", "backbone_use_axial_beyond_stride": 0,
                "drop_path_keep_prob": 1.0}
    return CMTDeepLab(_config(CMTDeepLabConfig, defaults, kwargs))


#: The tiny variant: the same code path at small widths and depths, trainable on a CPU.
TINY_DEFAULTS: dict[str, Any] = {
    "backbone_num_blocks": (1, 1, 2, 1),
    "width_multiplier": 0.25,
    "stem_width_multiplier": 0.25,
    "axial_num_heads": 4,
    "decoder": (
        DecoderStage(16, 0, 1, 64, True),
        DecoderStage(16, 64, 1, 32, True),
        DecoderStage(8, 32, 1, 16, True),
        DecoderStage(4, 16, 1, 16, False),
    ),
    "memory_channels": 128,
    "transformer_filters": 32,
    "num_heads": 4,
    "transformer_ffn_channels": 256,
    "embedding_channels": 64,
    "pixel_feature_dim": 32,
    "head_channels": 64,
    "drop_path_keep_prob": 1.0,
    "semantic_channels": 48,
    "semantic_projections": (16, 8),
}


@register_model("cmt-deeplab-tiny", CMTDeepLabConfig, "Axial-ResNet (x0.25, 5 blocks)", "-",
                "same code path, CPU-trainable; demo and tests")
def cmt_deeplab_tiny(**kwargs: Any) -> CMTDeepLab:
    return CMTDeepLab(_config(CMTDeepLabConfig, TINY_DEFAULTS, kwargs))


@register_model("max-deeplab-tiny", MaXDeepLabConfig, "MaX (x0.25)", "-",
                "MaX-DeepLab at tiny widths: the baseline for the tiny CMT")
def max_deeplab_tiny(**kwargs: Any) -> MaXDeepLab:
    defaults = {
        "num_blocks": (1, 1, 2, 1), "width_multiplier": 0.25, "stem_width_multiplier": 0.25,
        "num_heads": 4, "memory_channels": 128, "base_transformer_expansion": 0.25,
        "global_ffn_channels": 64, "transformer_ffn_channels": 256, "pixel_feature_dim": 32,
        "drop_path_keep_prob": 1.0, "semantic_channels": 48, "semantic_projections": (16, 8),
    }
    return MaXDeepLab(_config(MaXDeepLabConfig, defaults, kwargs))
