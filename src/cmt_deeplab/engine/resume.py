"""What a training state holds besides the weights and optimizer, and a resume from it.

A state stores the data position (epoch, micro-batches of the epoch consumed), the world
size, the scheduler and the fp16 scaler, the RNG states of every rank (global and the loss's
sampling generator) and the evaluation history. Resuming puts all of it back, so the run
continues with bit-identical weights (same hardware and thread count). The current config
owns the hyper-parameters and the lr curve (a longer run stretches the poly decay): changed
settings are allowed, with a warning naming them unless they are bookkeeping.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from tqdm import tqdm

from cmt_deeplab.engine.distributed import check_same_checkpoint, reshard_position
from cmt_deeplab.engine.optim import resume_scheduler
from cmt_deeplab.engine.rng_state import capture_rng_state, restore_rng_state, seed_everything
from cmt_deeplab.engine.training_state import latest_checkpoint, load_training_state
from cmt_deeplab.utils.plain import to_plain

if TYPE_CHECKING:
    from cmt_deeplab.engine.trainer import Trainer

#: Settings that do not change the trained weights (no resume warning when they change).
BOOKKEEPING_KEYS = {"model.recompute", "run.num_workers", "run.keep_freed_memory", "run.log_every",
                    "run.save_every", "run.keep_last", "run.eval_every", "run.time_limit_s",
                    "data.skip_bad", "data.val_split", "data.val_images", "data.val_annotations",
                    "data.val_panoptic_dir", "input.eval_size"}


def training_state(trainer: Trainer) -> dict[str, Any]:
    """The state of a training ``trainer`` besides weights and optimizer; every rank must call
    it (the RNG states of all ranks are gathered)."""
    rng_states = trainer.dist.gather_objects(
        {"global": capture_rng_state(), "loss": trainer.loss_generator.get_state()})
    return {
        "epoch": trainer.batches.epoch,
        "batch_in_epoch": trainer.batches.batch_in_epoch,
        "world_size": trainer.dist.world_size,
        # Images of this epoch consumed by all processes: the position another world size
        # resumes from (engine.distributed.reshard_position).
        "images_in_epoch": (trainer.batches.batch_in_epoch * trainer.micro_batch
                            * trainer.dist.world_size),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": rng_states,
        "eval_history": trainer.eval_history,
    }


def resume_latest(trainer: Trainer) -> Path | None:
    """Loads the newest complete training state of ``trainer.out_dir`` into ``trainer``;
    returns its directory, or ``None`` (a fresh start) when there is none."""
    checkpoint = latest_checkpoint(trainer.out_dir)
    check_same_checkpoint(trainer.dist.gather_objects(checkpoint and checkpoint.name),
                          trainer.out_dir)
    if checkpoint is None:
        if trainer.dist.is_main:
            tqdm.write(f"resume: no complete training state in {trainer.out_dir}; "
                       "starting from step 0")
        return None
    optimizer = trainer.optimizer
    configured = [{k: v for k, v in group.items() if k != "params"}
                  for group in optimizer.param_groups]
    loaded = load_training_state(checkpoint, trainer.model, optimizer)
    state = loaded["state"]
    if trainer.dist.is_main:
        warn_config_changes(trainer.out_dir, trainer.config.to_dict())
    if state.get("world_size", 1) != trainer.dist.world_size:
        run = trainer.config.run
        consumed = state.get("images_in_epoch",
                             state["batch_in_epoch"] * run.batch_size // run.accumulate)
        position = reshard_position(state["epoch"], consumed, state.get("world_size", 1),
                                    trainer.micro_batch, trainer.dist.world_size)
        state["epoch"], state["batch_in_epoch"], note = position
        if trainer.dist.is_main:
            warnings.warn(note, stacklevel=3)
    trainer.step = loaded["step"]
    trainer.batches.epoch = int(state["epoch"])
    trainer.batches.batch_in_epoch = int(state["batch_in_epoch"])
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)  # the configured lr, decay and base lr (initial_lr)
    trainer.scheduler = resume_scheduler(optimizer, trainer.config.schedule,
                                         trainer.config.run.steps, state["scheduler"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.eval_history = list(state.get("eval_history") or [])
    rng, rank, seed = state["rng"], trainer.dist.rank, trainer.config.run.seed
    if rank < len(rng):
        restore_rng_state(rng[rank]["global"])
        trainer.loss_generator.set_state(rng[rank]["loss"])
    else:  # a process the saved run did not have: fresh streams of its own
        seed_everything(seed + 1_000_003 * rank + trainer.step)
        trainer.loss_generator.manual_seed(seed * 7919 + rank + trainer.step)
    if trainer.dist.is_main:
        tqdm.write(f"resumed from {checkpoint} (step {trainer.step}, "
                   f"epoch {trainer.batches.epoch})")
    return checkpoint


def warn_config_changes(out_dir: Path, config: dict[str, Any]) -> None:
    """Resuming with other settings is allowed (e.g. more steps) but worth a warning."""
    previous_file = out_dir / "train_config.yaml"
    if not previous_file.is_file():
        return
    try:
        previous = yaml.safe_load(previous_file.read_text())
    except (OSError, yaml.YAMLError):
        return
    changed = [key for key in changed_keys(previous, to_plain(config))
               if key not in BOOKKEEPING_KEYS and not key.startswith("evaluation.")]
    if changed:
        warnings.warn(f"resuming {out_dir} with changed settings: {', '.join(changed)}"
                      " (the run will not match an uninterrupted one)", stacklevel=4)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [k for key in keys for k in changed_keys(old.get(key), new.get(key),
                                                        f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []
