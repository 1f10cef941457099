"""Training engine: the training config, training states, the optimizer and schedule, the
periodic evaluation and the Trainer.

Names are imported lazily (PEP 562), so importing one light submodule (``engine.config``) does
not import the trainer and its dependencies.
"""

from __future__ import annotations

from cmt_deeplab.utils.lazy_exports import lazy_exports

_EXPORTS = {
    "latest_checkpoint": "training_state",
    "list_checkpoints": "training_state",
    "load_training_state": "training_state",
    "save_training_state": "training_state",
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
