"""Training engine: checkpoints, the training config, the optimizer and schedule, the Trainer.

Names are imported lazily (PEP 562), so ``from cmt_deeplab.engine.checkpoint import ...`` (used
by ``predict``) does not import the trainer and its dependencies.
"""

from __future__ import annotations

from cmt_deeplab.utils.lazy_exports import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
