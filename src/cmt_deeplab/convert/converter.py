"""deeplab2 checkpoint -> our state dict, with a report of what went where.

``convert_state_dict(checkpoint, model)`` is the whole conversion: it applies the family's
rules (:mod:`cmt_deeplab.convert.families`), checks every shape, and returns a complete state
dict for ``model`` (tensors the checkpoint does not fill keep the model's own initial values)
and a :class:`ConversionReport`: each variable and the tensor it went to, each variable left
unused (optimizer slots, step counters, heads of other tasks) and each tensor left new.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from cmt_deeplab.convert.families import conversion_rules
from cmt_deeplab.convert.layouts import apply_layout
from cmt_deeplab.convert.names import ENCODER, Rule, Skip
from cmt_deeplab.models.registry import model_spec

#: The suffix of every variable of a TF2 object-based checkpoint.
VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
#: TF Model Garden's trainer saves the encoder under this prefix instead of ``encoder/``.
MODEL_GARDEN_ENCODER = "backbone/_encoder/"
#: Our state-dict entries with no counterpart in any TF model (BN update counters).
BOOKKEEPING_SUFFIX = "num_batches_tracked"


class ArraySource(Protocol):
    """What the converter needs of a checkpoint: names, shapes and values.

    ``TFCheckpoint`` is one; so is a plain ``{name: np.ndarray}`` (an ``.npz`` of variables).
    """

    def __iter__(self): ...

    def __getitem__(self, name: str) -> np.ndarray: ...


class ConversionError(ValueError):
    """The checkpoint does not fit the model (missing variables, other shapes)."""


@dataclass
class ConversionReport:
    """What a conversion did; ``to_dict()`` is ``conversion.json``."""

    checkpoint: str
    model: str
    backbone_only: bool
    #: ``{"variable", "tensor", "layout", "checkpoint_shape", "shape"}`` per loaded tensor.
    loaded: list[dict[str, Any]] = field(default_factory=list)
    #: Checkpoint variables nothing was taken from.
    unused: list[str] = field(default_factory=list)
    #: ``{"tensor", "shape", "reason"}`` per model tensor the checkpoint did not fill.
    new: list[dict[str, Any]] = field(default_factory=list)
    #: ``{"tensor", "variable", "reason"}``: found but not taken (``strict=False`` only).
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: Our BN update counters (no TF counterpart; set to 0).
    bookkeeping: list[str] = field(default_factory=list)
    #: The checkpoint's training step (``global_step``), if it has one.
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        counts = {"loaded": len(self.loaded), "unused": len(self.unused), "new": len(self.new),
                  "skipped": len(self.skipped), "bookkeeping": len(self.bookkeeping)}
        loaded_values = sum(int(np.prod(r["shape"])) for r in self.loaded)
        new_values = sum(int(np.prod(r["shape"])) for r in self.new)
        return {"counts": counts, "loaded_values": loaded_values, "new_values": new_values,
                **asdict(self)}

    def summary(self) -> str:
        """A short table: loaded / new / skipped / unused, tensors and values."""
        loaded_values = sum(int(np.prod(r["shape"])) for r in self.loaded)
        new_values = sum(int(np.prod(r["shape"])) for r in self.new)
        lines = [
            f"{'':10} {'tensors':>8} {'values':>12}",
            f"{'loaded':10} {len(self.loaded):8d} {loaded_values:12,d}",
            f"{'new':10} {len(self.new):8d} {new_values:12,d}",
            f"{'skipped':10} {len(self.skipped):8d}",
            f"{'unused':10} {len(self.unused):8d}   (checkpoint variables)",
        ]
        reasons: dict[str, int] = {}
        for record in self.new:
            reasons[record["reason"]] = reasons.get(record["reason"], 0) + 1
        lines += [f"  new: {count} x {reason}" for reason, count in reasons.items()]
        return "\n".join(lines)


def canonical_names(source: ArraySource) -> dict[str, str]:
    """``{canonical name: checkpoint key}``: suffix stripped, Model Garden's encoder prefix
    renamed to ``encoder/``."""
    names = {}
    for key in source:
        name = key[: -len(VARIABLE_SUFFIX)] if key.endswith(VARIABLE_SUFFIX) else key
        if name.startswith(MODEL_GARDEN_ENCODER):
            name = f"{ENCODER}/" + name[len(MODEL_GARDEN_ENCODER):]
        names[name] = key
    return names


def stage_block_counts(names: Mapping[str, str]) -> dict[str, int]:
    """Blocks per encoder stage in the checkpoint: ``{"stage4": 6, ...}``."""
    counts: dict[str, int] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) > 2 and parts[0] == ENCODER and parts[1].startswith("_stage") \
                and parts[1][6:].isdigit() and parts[2].startswith("_block"):
            number = parts[2][len("_block"):].split("_")[0]
            if number.isdigit():
                stage = parts[1][1:]
                counts[stage] = max(counts.get(stage, 0), int(number))
    return counts


def _shape_of(source: ArraySource, key: str) -> tuple[int, ...]:
    shape = getattr(source, "shape", None)
    return tuple(shape(key)) if callable(shape) else tuple(np.shape(source[key]))


def _layout_shape(layout: str, shape: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...]:
    """The shape ``apply_layout`` gives, computed on a zero-stride stand-in (no data read)."""
    return tuple(apply_layout(layout, np.broadcast_to(np.float32(0), shape), target).shape)


def plan_conversion(
    source: ArraySource,
    model: nn.Module,
    backbone_only: bool = False,
    checkpoint_name: str = "checkpoint",
) -> tuple[list[tuple[Rule, str]], ConversionReport, list[str], list[str]]:
    """Matches the rules to the checkpoint by names and shapes only (no tensor is read).

    ``model`` may live on the meta device. Returns ``(matches, report, missing, mismatched)``:
    the (rule, checkpoint key) pairs to load, the report without values, and the problems.
    """
    names = canonical_names(source)
    rules = conversion_rules(model, backbone_only, stage_block_counts(names))
    own = model.state_dict()
    report = ConversionReport(checkpoint_name, _model_name(model), backbone_only)
    matches: list[tuple[Rule, str]] = []
    covered: set[str] = set()
    used: set[str] = set()
    missing: list[str] = []
    mismatched: list[str] = []
    for rule in rules:
        if isinstance(rule, Skip):
            continue
        if rule.target not in own:
            raise AssertionError(f"conversion rule for a tensor the model lacks: {rule.target}")
        covered.add(rule.target)
        target_shape = tuple(own[rule.target].shape)
        found = next((s for s in rule.sources if s in names), None)
        if found is None:
            missing.append(f"{rule.target} <- {rule.sources[0]}")
            report.new.append({"tensor": rule.target, "shape": list(target_shape),
                               "reason": f"checkpoint has no {rule.sources[0]}"})
            continue
        key = names[found]
        shape = _shape_of(source, key)
        if _layout_shape(rule.layout, shape, target_shape) != target_shape:
            problem = (f"variable {key} {list(shape)} does not fit {rule.target} "
                       f"{list(target_shape)} (layout {rule.layout})")
            mismatched.append(problem)
            report.skipped.append({"tensor": rule.target, "variable": key, "reason": problem})
            continue
        used.add(found)
        matches.append((rule, key))
        report.loaded.append({"variable": key, "tensor": rule.target, "layout": rule.layout,
                              "checkpoint_shape": list(shape), "shape": list(target_shape)})
    skips = [rule for rule in rules if isinstance(rule, Skip)]
    for key, value in own.items():
        if key in covered:
            continue
        if key.endswith(BOOKKEEPING_SUFFIX):
            report.bookkeeping.append(key)
            continue
        reason = next((s.reason for s in skips if key.startswith(s.prefix)), None)
        if reason is None:
            raise AssertionError(f"no conversion rule covers {key}")
        report.new.append({"tensor": key, "shape": list(value.shape), "reason": reason})
    report.unused = sorted(names[n] for n in names if n not in used)
    return matches, report, missing, mismatched


def convert_state_dict(
    source: ArraySource,
    model: nn.Module,
    backbone_only: bool = False,
    strict: bool = True,
    checkpoint_name: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Maps a deeplab2 checkpoint onto ``model``'s state dict.

    Args:
        source: the checkpoint (``TFCheckpoint``, or ``{variable: array}``).
        model: built with the checkpoint's widths (``build_model``); not modified.
        backbone_only: take the encoder only; everything else stays as initialised.
        strict: raise on any tensor the rules expect but the checkpoint lacks or has in
            another shape; ``False`` keeps the model's value and lists it (``skipped`` / ``new``):
            net surgery, e.g. a class head for another class set.
        checkpoint_name: how the report and errors name the checkpoint.

    Returns:
        ``(state_dict, report)``: a complete state dict for ``model`` (load it strictly).

    Raises:
        ConversionError: missing variables or shape mismatches (``strict``), naming them; a
            variable that is not floating point.
    """
    matches, report, missing, mismatched = plan_conversion(source, model, backbone_only,
                                                           checkpoint_name)
    if strict and (missing or mismatched):
        raise mismatch_error(checkpoint_name, report.model, missing, mismatched,
                             len(matches) + len(missing) + len(mismatched))
    own = model.state_dict()
    state = {key: value.detach().clone() for key, value in own.items()}
    for rule, key in matches:
        value = apply_layout(rule.layout, np.asarray(source[key]), tuple(own[rule.target].shape))
        if not np.issubdtype(value.dtype, np.floating):
            raise ConversionError(f"{checkpoint_name}: variable {key} is {value.dtype}, "
                                  f"not floating point ({rule.target})")
        state[rule.target] = torch.from_numpy(np.ascontiguousarray(value)).to(own[rule.target].dtype)
    names = canonical_names(source)
    step_name = next((n for n in ("global_step", "step") if n in names), None)
    if step_name is not None:
        report.step = int(np.asarray(source[names[step_name]]).reshape(-1)[0])
    return state, report


def mismatch_error(
    checkpoint: str, model: str, missing: list[str], mismatched: list[str], expected: int
) -> ConversionError:
    """The error for a checkpoint that does not fit: counts and the first few of each kind."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} of {expected} tensors have no checkpoint variable "
                     f"(first: {'; '.join(missing[:3])})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es) (first: {'; '.join(mismatched[:3])})")
    hint = ""
    if len(missing) + len(mismatched) > expected // 4:
        hint = " -- is it a checkpoint of another model or width?"
    return ConversionError(f"{checkpoint} does not fit {model}: " + "; ".join(parts) + hint)


def load_converted(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """``model.load_state_dict(state, strict=True)``; returns ``model``."""
    model.load_state_dict(dict(state), strict=True)
    return model


__all__ = ["ArraySource", "ConversionError", "ConversionReport", "Rule", "canonical_names",
           "convert_state_dict", "load_converted", "mismatch_error", "plan_conversion",
           "stage_block_counts"]


def _model_name(model: nn.Module) -> str:
    """The registered name of a ``build_model`` model, else its class name."""
    try:
        return model_spec(model).name
    except ValueError:
        return type(model).__name__
