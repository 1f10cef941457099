"""The model zoo, timm style: each variant is a constructor registered with ``@register_model``
at the bottom of its architecture's file (``max_deeplab.py``, ``cmt_deeplab.py``, ``rfn.py``),
its body holding the variant's numbers. ``build_model(name, **overrides)`` builds one,
``list_models()`` names them, and ``model_spec(model)`` says what a built model was built with
(what checkpoints store). Importing ``cmt_deeplab.models`` registers every variant."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from cmt_deeplab.models.meta_arch import slot_table_rows


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant: its constructor, the config class whose fields are its valid
    overrides, and what ``cmt-deeplab models`` prints about it."""

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
    """Registered names in sorted order, optionally filtered by a shell-style pattern
    (``"cmt-*"``)."""
    names = sorted(_REGISTRY)
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
