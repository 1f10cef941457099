"""The training configuration: nested dataclasses loaded from YAML, with overrides.

    config = load_train_config("coco_cmt_deeplab_s", ["run.steps=1000", "optimizer.lr=5e-4"])

Precedence: dataclass defaults < the YAML file < ``--set key.sub=value`` (the value is parsed
with ``yaml.safe_load``, so ``3e-4``, ``true``, ``[641, 641]`` and ``null`` work) < the common
command-line flags (``--steps``, ``--lr``, ...), which the ``train`` command turns into the same
dotted keys. An unknown key anywhere is an error naming it, and values are type-checked.

``--config NAME`` takes a path or the bare name of a config shipped in ``cmt_deeplab/configs``
(``list_shipped_configs()``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cmt_deeplab.data.splits import PATH_FIELDS, SplitSource, open_split
from cmt_deeplab.engine.typed_config import build_dataclass, fix_yaml_number
from cmt_deeplab.losses.config import LossConfig
from cmt_deeplab.models.layers.recompute import RECOMPUTE_MODES
from cmt_deeplab.utils.size import parse_size

AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("adamw", "adam")


@dataclass
class ModelSection:
    """Which registered model, how many slots, ``build_model`` overrides, and what to
    recompute in backward to save memory (``none``, ``axial`` or ``blocks``, which also
    recomputes the loss terms:
    ``models/layers/recompute.py``)."""

    name: str = "cmt-deeplab-s"
    num_slots: int = 128
    overrides: dict[str, Any] = field(default_factory=dict)
    recompute: str = "none"


@dataclass
class InitSection:
    """A pretrained start (``cmt_deeplab.pretrained``): a model directory, a ``.safetensors``
    file, a deeplab2 checkpoint or a published checkpoint name; the whole model or its pixel
    encoder only; ``strict`` makes tensors that do not fit an error. Loaded at the start of a
    fresh run (a resumed run continues from its own state)."""

    checkpoint: str | None = None
    backbone_only: bool = False
    strict: bool = True


@dataclass
class DataSection:
    """The splits: ``root`` + split names (COCO or Cityscapes layout), or explicit paths."""

    root: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    train_images: str | None = None
    train_annotations: str | None = None
    train_panoptic_dir: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    val_panoptic_dir: str | None = None
    label_divisor: int | None = None  # None: the dataset's own (COCO 256, Cityscapes 1000)
    skip_bad: bool = False

    def source(self, split: str) -> SplitSource:
        """Where split ``split`` (``"train"`` or ``"val"``) is: ``root`` + ``{split}_split``,
        or the ``{split}_images / _annotations / _panoptic_dir`` paths."""
        return SplitSource(self.root, getattr(self, f"{split}_split"),
                           *(getattr(self, f"{split}_{field}") for field in PATH_FIELDS))

    def open(self, split: str, transform: Any = None, seed: int | None = None) -> Any:
        """The dataset of split ``split`` (``data.splits.open_split``)."""
        spelling = {"root": "data.root", "split": f"data.{split}_split"}
        spelling |= {field: f"data.{split}_{field}" for field in PATH_FIELDS}
        kwargs: dict[str, Any] = {"transform": transform, "skip_bad": self.skip_bad, "seed": seed}
        if self.label_divisor is not None:
            kwargs["label_divisor"] = self.label_divisor
        return open_split(self.source(split), spelling, **kwargs)


@dataclass
class InputSection:
    """Training crop ``[H, W]`` and the evaluation canvas (default: the crop)."""

    crop: list[int] = field(default_factory=lambda: [1025, 1025])
    eval_size: list[int] | None = None

    def __post_init__(self) -> None:
        self.crop = list(parse_size(self.crop, "input.crop"))
        if self.eval_size is not None:
            self.eval_size = list(parse_size(self.eval_size, "input.eval_size"))


@dataclass
class AugmentationSection:
    """``data.transforms.TrainTransform`` arguments."""

    min_scale: float = 0.5
    max_scale: float = 1.5
    scale_step: float = 0.1
    resize_to_crop: bool = True
    flip_prob: float = 0.5


@dataclass
class OptimizerSection:
    """AdamW (decay on conv / linear kernels only) or Adam; ``backbone.*`` lr multiplier."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-7  # Keras' default, which deeplab2 trains with
    backbone_lr_multiplier: float = 0.1


@dataclass
class ScheduleSection:
    """Linear warm-up from 0, then poly decay over all steps (deeplab2's ``WarmUp`` + poly)."""

    warmup_steps: int = 5000
    power: float = 0.9
    end_lr_factor: float = 0.0


@dataclass
class EvaluationSection:
    """Periodic PQ on the val split: post-processing and how many images."""

    method: str = "pixelwise"
    max_images: int = 0  # 0: all
    batch_size: int = 4
    class_threshold: float = 0.7
    pixel_threshold: float = 0.4
    thing_area_limit: float | None = None  # None: deeplab2's limits scaled to the canvas
    stuff_area_limit: float | None = None


@dataclass
class RunSection:
    """Steps and bookkeeping. ``batch_size`` is images per optimizer step over all processes
    and accumulation micro-batches together. The final step always gets a training state;
    ``save_every`` 0 saves only that one, ``eval_every`` 0 turns evaluation off."""

    steps: int = 200_000
    batch_size: int = 64
    seed: int = 0
    save_every: int = 5000
    keep_last: int = 3
    eval_every: int = 0
    log_every: int = 20
    device: str = "auto"
    amp: str = "none"
    grad_clip: float = 0.0
    accumulate: int = 1
    num_workers: int = 4
    # Convolutions in NHWC memory: oneDNN's fast layout on CPU (a tiny-model step ~15% faster,
    # its depthwise-conv backward ~3x), tensor cores' on CUDA. Numerics are layout-independent.
    channels_last: bool = True
    # On CPU, glibc keeps freed large blocks for the next step instead of unmapping them and
    # page-faulting them back in (steps 1.25-1.44x faster; utils/allocator.py).
    keep_freed_memory: bool = True
    # Stop early (saving a resumable state and the model) once this many seconds of training
    # have passed in this invocation; 0 = no limit. The demo trains within a time budget.
    time_limit_s: float = 0.0
    # With a time limit: shorten ``steps`` as the run goes (from its measured speed) so that the
    # poly schedule ends when the time does, instead of a run cut off at a high learning rate.
    # ``steps`` stays the upper bound. For time-budgeted runs (the demo); not reproducible
    # across machines, so off by default.
    fit_time_limit: bool = False


@dataclass
class TrainConfig:
    """Everything one training run needs; ``to_dict`` is stored in every checkpoint."""

    model: ModelSection = field(default_factory=ModelSection)
    init: InitSection = field(default_factory=InitSection)
    data: DataSection = field(default_factory=DataSection)
    input: InputSection = field(default_factory=InputSection)
    augmentation: AugmentationSection = field(default_factory=AugmentationSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossConfig = field(default_factory=LossConfig)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> TrainConfig:
        """Builds a config from a (sparse) mapping; unknown keys and bad types name the key."""
        return build_dataclass(cls, data or {})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        run, opt, sched = self.run, self.optimizer, self.schedule
        checks = [
            (run.steps >= 1, "run.steps must be >= 1", run.steps),
            (run.batch_size >= 1, "run.batch_size must be >= 1", run.batch_size),
            (run.accumulate >= 1, "run.accumulate must be >= 1", run.accumulate),
            (run.batch_size % run.accumulate == 0,
             "run.batch_size must be a multiple of run.accumulate", run.batch_size),
            *((getattr(run, key) >= 0, f"run.{key} must be >= 0", getattr(run, key))
              for key in ("save_every", "eval_every", "log_every", "keep_last", "num_workers")),
            (run.amp in AMP_MODES, f"run.amp must be one of {AMP_MODES}", run.amp),
            (run.grad_clip >= 0, "run.grad_clip must be >= 0 (0: off)", run.grad_clip),
            (opt.name in OPTIMIZERS, f"optimizer.name must be one of {OPTIMIZERS}", opt.name),
            (opt.lr > 0, "optimizer.lr must be > 0", opt.lr),
            (opt.weight_decay >= 0, "optimizer.weight_decay must be >= 0", opt.weight_decay),
            (len(opt.betas) == 2 and all(0 <= b < 1 for b in opt.betas),
             "optimizer.betas must be two values in [0, 1)", opt.betas),
            (opt.backbone_lr_multiplier >= 0, "optimizer.backbone_lr_multiplier must be >= 0",
             opt.backbone_lr_multiplier),
            (sched.warmup_steps >= 0, "schedule.warmup_steps must be >= 0", sched.warmup_steps),
            (sched.power >= 0, "schedule.power must be >= 0", sched.power),
            (0 <= sched.end_lr_factor <= 1, "schedule.end_lr_factor must lie in [0, 1]",
             sched.end_lr_factor),
            (self.model.num_slots >= 1, "model.num_slots must be >= 1", self.model.num_slots),
            (self.model.recompute in RECOMPUTE_MODES,
             f"model.recompute must be one of {RECOMPUTE_MODES}", self.model.recompute),
            (self.evaluation.method in ("pixelwise", "maskwise"),
             "evaluation.method must be 'pixelwise' or 'maskwise'", self.evaluation.method),
            (self.evaluation.batch_size >= 1, "evaluation.batch_size must be >= 1",
             self.evaluation.batch_size),
        ]
        for ok, message, value in checks:
            if not ok:
                raise ValueError(message + ("" if value is None else f", got {value!r}"))

    @property
    def eval_size(self) -> tuple[int, int]:
        size = self.input.eval_size or self.input.crop
        return int(size[0]), int(size[1])


# --- loading -------------------------------------------------------------------------------


def configs_dir() -> Path:
    """Folder of the YAML configs shipped with the package."""
    return Path(str(resources.files("cmt_deeplab") / "configs"))


#: The recipe ``train --model NAME`` trains with when no ``--config`` is given: the paper's
#: COCO setting for the paper's models (MaX-L and the ResNet-50 ablation take their family's
#: small-model recipe, as in the paper), the synthetic CPU preset for the tiny ones.
MODEL_RECIPES = {
    "cmt-deeplab-s": "coco_cmt_deeplab_s",
    "cmt-deeplab-l": "coco_cmt_deeplab_l",
    "cmt-deeplab-l-rfn": "coco_cmt_deeplab_l_rfn",
    "cmt-deeplab-r50": "coco_cmt_deeplab_s",
    "cmt-deeplab-tiny": "synthetic_cmt_deeplab_tiny",
    "max-deeplab-s": "coco_max_deeplab_s",
    "max-deeplab-l": "coco_max_deeplab_s",
    "max-deeplab-tiny": "synthetic_cmt_deeplab_tiny",
}


#: deeplab2's ImageNet backbones of the models whose recipe is borrowed.
_OWN_BACKBONES = {
    "max-deeplab-l": "max_deeplab_l_backbone_imagenet1k",
    "cmt-deeplab-r50": "resnet50_imagenet1k",
}


def model_recipe(model: str) -> tuple[str | None, dict[str, Any]]:
    """``(shipped config name, its settings)`` of ``model``'s default recipe, with the model
    set to ``model`` and without the config's data section (the data is the user's) nor, for
    a recipe borrowed from another model of the family, that model's pretrained start;
    ``(None, {...})`` with the built-in defaults for a model without one."""
    name = MODEL_RECIPES.get(model)
    data = read_config_file(name) if name is not None else {}
    data.pop("data", None)
    if data.get("model", {}).get("name") != model:
        # A borrowed recipe's pretrained start fits another model: this model's own ImageNet
        # backbone where deeplab2 published one, else from scratch.
        data.pop("init", None)
        if model in _OWN_BACKBONES:
            data["init"] = {"checkpoint": _OWN_BACKBONES[model], "backbone_only": True}
    data.setdefault("model", {})["name"] = model
    return name, data


def list_shipped_configs() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the bare name (with or without ``.yaml``) of a shipped one."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = configs_dir() / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"config not found: {name_or_path} (not a file, nor a shipped config; shipped: "
        f"{', '.join(list_shipped_configs())})"
    )


def read_config_file(name_or_path: str | Path) -> dict[str, Any]:
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"config {path} is not valid YAML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read config {path}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"optimizer.lr=3e-4"`` -> ``("optimizer.lr", 0.0003)`` (value via ``yaml.safe_load``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set expects key.sub=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"--set {key}: cannot parse value {raw!r}: {error}") from None
    return key, fix_yaml_number(value)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"``, creating the mappings on the way."""
    parts = key.split(".")
    node = data
    for position, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: position + 1])
            raise ValueError(f"cannot set {key}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_train_config(
    name_or_path: str | Path | Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
    values: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < file (or a mapping of its settings) < ``overrides`` (``"key.sub=value"``
    strings) < ``values`` (dotted keys, already typed: what the command-line flags give)."""
    if isinstance(name_or_path, Mapping):
        data = copy.deepcopy(dict(name_or_path))
    else:
        data = read_config_file(name_or_path) if name_or_path is not None else {}
    for text in overrides:
        set_dotted(data, *parse_override(text))
    for key, value in (values or {}).items():
        set_dotted(data, key, value)
    try:
        return TrainConfig.from_dict(data)
    except ValueError as error:
        if name_or_path is None or isinstance(name_or_path, Mapping):
            raise
        # The bad setting may come from the file: name it (and the command line, if used).
        source = str(resolve_config_path(name_or_path))
        if overrides or values:
            source += " and the command line"
        raise ValueError(f"{error} (settings from {source})") from None

