"""Training engine: checkpoints, the training config, the optimizer and schedule, the Trainer.

Names are imported lazily (PEP 562), so ``from cmt_deeplab.engine.checkpoint import ...`` (used
by ``predict``) does not import the trainer and its dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "latest_checkpoint": "checkpoint",
    "list_checkpoints": "checkpoint",
    "load_model_dir": "checkpoint",
    "load_training_state": "checkpoint",
    "save_model_dir": "checkpoint",
    "save_training_state": "checkpoint",
    "TrainConfig": "config",
    "load_train_config": "config",
    "resolve_config_path": "config",
    "build_optimizer": "optim",
    "poly_lr_factor": "optim",
    "evaluate_model": "evaluate",
    "Trainer": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
