"""The training loop: ``Trainer(config, out_dir).train()``.

One optimizer step = ``run.accumulate`` micro-batches of ``run.batch_size / (world_size x
accumulate)`` images per process. Everything random is seeded from ``run.seed``: the model
initialisation, the data order (``ResumableSampler``: permutation by ``seed + epoch``), the
augmentation (the dataset draws item ``i`` of epoch ``e`` from ``[seed, e, i]``), the loader's
worker seeds (a generator re-seeded every epoch), the loss's pixel sampling (its own
generator) and the global RNGs (drop path). A training state holds all of them plus the
optimizer, the schedule and the position in the epoch, so a resumed run continues with
bit-identical weights (on the same hardware and thread count).

Output directory::

    OUT/train_config.yaml      the resolved config
    OUT/checkpoints/step_*/    training states (``engine.checkpoint``), the newest ``keep_last``
    OUT/events.*               TensorBoard scalars (each loss term, lr, grad norm, PQ)
    OUT/eval.json              PQ after each evaluation
    OUT/model.safetensors      the final model, with OUT/config.yaml (``load_model_dir``)

Only rank 0 writes. A non-finite loss term or gradient stops the run with a
``FloatingPointError`` naming the term or parameter and the step, before the optimizer step
and before anything is written, so the newest checkpoint is the last good state.
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from cmt_deeplab.data.collate import collate_batch
from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.engine.config import TrainConfig
from cmt_deeplab.engine.data import has_split, open_split, random_batch, train_transform
from cmt_deeplab.engine.distributed import (
    DistributedContext,
    ResumableSampler,
    check_same_checkpoint,
    reshard_position,
)
from cmt_deeplab.engine.evaluate import evaluate_model
from cmt_deeplab.engine.optim import build_optimizer, build_scheduler
from cmt_deeplab.engine.rng_state import capture_rng_state, restore_rng_state
from cmt_deeplab.engine.training_state import (
    latest_checkpoint,
    list_checkpoints,
    load_training_state,
    save_training_state,
)
from cmt_deeplab.losses.criterion import PanopticCriterion
from cmt_deeplab.model_dir import save_model_dir, unwrap_model
from cmt_deeplab.models.registry import model_spec
from cmt_deeplab.utils.allocator import keep_freed_memory
from cmt_deeplab.utils.device import resolve_device
from cmt_deeplab.utils.io import atomic_write_json, atomic_write_text
from cmt_deeplab.utils.plain import to_plain
from cmt_deeplab.utils.process_memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

#: Settings that do not change the trained weights (no resume warning when they change).
_BOOKKEEPING_KEYS = {"model.recompute", "run.num_workers", "run.keep_freed_memory", "run.log_every",
                     "run.save_every", "run.keep_last", "run.eval_every", "run.time_limit_s", "data.skip_bad",
                     "data.val_split", "data.val_images", "data.val_annotations",
                     "data.val_panoptic_dir", "input.eval_size"}
#: Steps between re-plans of ``run.fit_time_limit``, and the share of the time limit planned
#: (the rest absorbs the final evaluation and save, and speed changes after the last plan).
_REPLAN_EVERY = 50
_FIT_SHARE = 0.95

#: COCO's class counts: the model of a ``--dry-run`` without data.
_DEFAULT_CLASSES = (133, 80)


class Trainer:
    """Trains the model a ``TrainConfig`` describes and writes into ``out_dir``.

    Args:
        config: the full configuration.
        out_dir: output directory (see the module notes); ``None`` only for ``dry_run``.
        resume: continue from the newest complete training state in ``out_dir`` (a fresh
            start when there is none). Without it, an ``out_dir`` that already holds training
            states is an error, so a run is never overwritten by accident.
        progress: show a tqdm progress bar (rank 0).
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path | None,
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.resume = resume
        self.progress = progress
        run = config.run
        self.device = resolve_device(run.device, "run.device")
        self.dist = DistributedContext.from_env(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        per_step = self.dist.world_size * run.accumulate
        if run.batch_size % per_step:
            raise ValueError(
                f"run.batch_size={run.batch_size} must be a multiple of world size x "
                f"run.accumulate = {self.dist.world_size} x {run.accumulate}"
            )
        self.micro_batch = run.batch_size // per_step
        if not resume and self.dist.restarted(self.device):
            # torchrun restarted the workers (a worker or node failed): continue from the newest
            # complete training state, as --resume does.
            resume = self.resume = True
        self.amp_dtype = _amp_dtype(run.amp, self.device)
        if self.device.type == "cpu" and run.keep_freed_memory:
            keep_freed_memory()
        if not resume and self.out_dir is not None and list_checkpoints(self.out_dir):
            raise ValueError(f"{self.out_dir} already holds training states; pass --resume to "
                             "continue that run, or choose another --out")

        _seed_everything(run.seed)
        self.train_dataset = None
        if has_split(config.data, "train"):
            self.train_dataset = open_split(config.data, "train", train_transform(config),
                                            seed=run.seed)
        self.val_dataset = open_split(config.data, "val") if has_split(config.data, "val") \
            else None
        if self.train_dataset is not None and self.val_dataset is not None:
            ids = [[c.id for c in d.info.categories] for d in (self.train_dataset,
                                                               self.val_dataset)]
            if ids[0] != ids[1]:
                raise ValueError(f"the train and val splits list different categories "
                                 f"(ids {ids[0]} vs {ids[1]}); evaluate on the same label set")
        if self.train_dataset is not None:
            self.info: DatasetInfo = self.train_dataset.info
        elif self.val_dataset is not None:
            self.info = self.val_dataset.info
        else:
            self.info = None  # a dry run on random data

        num_classes, num_things = ((self.info.num_classes, self.info.num_thing_classes)
                                   if self.info is not None else _DEFAULT_CLASSES)
        from cmt_deeplab.models import build_model, set_recompute

        model = build_model(config.model.name, num_classes=num_classes,
                            num_thing_classes=num_things, num_slots=config.model.num_slots,
                            **config.model.overrides)
        set_recompute(model, config.model.recompute)
        self.model = model.to(self.device).train()
        self.memory_format = (torch.channels_last if run.channels_last
                              else torch.contiguous_format)
        self.model.to(memory_format=self.memory_format)
        # Each rank gets its own stream for drop path; the model init above is shared.
        _seed_everything(run.seed + 1_000_003 * self.dist.rank)
        self.loss_generator = torch.Generator(device=self.device).manual_seed(
            run.seed * 7919 + self.dist.rank)
        self.criterion = PanopticCriterion(num_classes, config.loss, self.loss_generator)
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            self.train_model = _wrap_distributed(self.model, self.criterion, self.device)
            self.model = unwrap_model(self.train_model)  # SyncBatchNorm layers inside
        self.optimizer = build_optimizer(self.model, config.optimizer)
        # Walking the module tree for the parameters costs ~2 ms a step on a tiny model.
        self._parameters_list = list(self.model.parameters())
        self.scheduler = build_scheduler(self.optimizer, config.schedule, run.steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches of this rank consumed in the current epoch
        self.eval_history: list[dict[str, Any]] = []
        self._loader: DataLoader | None = None
        self._iterator: Iterator | None = None
        self._writer = None

    # --- public entry points ---------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Runs to ``run.steps`` (from the newest state with ``resume``); returns a summary."""
        if self.out_dir is None:
            raise ValueError("training needs an output directory (--out)")
        if self.train_dataset is None:
            raise ValueError("no training data: set data.root + data.train_split (--data ROOT "
                             "--train-split NAME) or the data.train_* paths")
        try:
            return self._train()
        finally:
            self._close()  # also on errors: TensorBoard flushed, process group left

    def _train(self) -> dict[str, Any]:
        run = self.config.run
        if self.resume:
            self._restore()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "train_config.yaml",
                              yaml.safe_dump(to_plain(self.config.to_dict()), sort_keys=False))
        self._build_loader()
        self.total_steps = run.steps  # shortened by run.fit_time_limit as the run goes
        bar = tqdm(total=run.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        start_step, start_time = self.step, time.perf_counter()
        last: dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                losses, grad_norm = self._train_step()
                self.step += 1
                bar.update(1)
                if run.fit_time_limit and run.time_limit_s and self.step % _REPLAN_EVERY == 0:
                    self._fit_time_limit(start_step, start_time)
                    bar.total = self.total_steps
                if run.log_every and (self.step % run.log_every == 0
                                      or self.step == self.total_steps):
                    last = self.dist.mean_over_ranks(losses)  # the whole batch's mean
                    self._log(last, grad_norm)
                    lr = self.optimizer.param_groups[-1]["lr"]
                    bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{lr:.2e}")
                    if bar.disable and self.dist.is_main:  # no bar: a plain log line instead
                        rate = (time.perf_counter() - start_time) / (self.step - start_step)
                        print(f"step {self.step}/{self.total_steps}: loss {last['loss']:.4f}, lr "
                              f"{lr:.2e}, {rate:.3f}s/step", flush=True)
                if run.eval_every and self.step % run.eval_every == 0:
                    self.evaluate()
                if run.save_every and self.step % run.save_every == 0:
                    self.save_state()
                if run.time_limit_s and self._time_is_up(start_time):
                    tqdm.write(f"time limit of {run.time_limit_s:.0f}s reached at step "
                               f"{self.step}/{run.steps}; saving (rerun with --resume to go on)")
                    break
        finally:
            bar.close()
        if (run.eval_every and self.step % run.eval_every and self.val_dataset is not None
                and self.step > start_step):
            self.evaluate()
        if self.step > start_step and (not run.save_every or self.step % run.save_every):
            self.save_state()  # the final state, so that a longer run can resume from it
        if self.dist.is_main:
            save_model_dir(self.out_dir, self.model, self.model_dir_config())
        self.dist.barrier()
        elapsed = time.perf_counter() - start_time
        return {"steps": self.step, "planned_steps": self.total_steps, "seconds": elapsed,
                "seconds_per_step": elapsed / max(self.step - start_step, 1),
                "last_losses": last,
                "pq": self.eval_history[-1]["pq"] if self.eval_history else None}

    def _fit_time_limit(self, start_step: int, start_time: float) -> None:
        """Sets ``total_steps`` (and the schedule's end) to what the time left allows at the
        speed so far (evaluations and saves included), never beyond ``run.steps``."""
        run = self.config.run
        elapsed = time.perf_counter() - start_time
        per_step = elapsed / max(self.step - start_step, 1)
        left = _FIT_SHARE * run.time_limit_s - elapsed
        total = min(run.steps, self.step + max(int(left / per_step), 0))
        if self.dist.enabled:  # every rank takes rank 0's plan
            plan = torch.tensor([float(total)], device=self.device)
            torch.distributed.broadcast(plan, src=0)
            total = int(plan.item())
        self.total_steps = total
        for schedule in self.scheduler.lr_lambdas:
            schedule.total_steps = total

    def _time_is_up(self, start_time: float) -> bool:
        """Whether ``run.time_limit_s`` has passed; every rank takes rank 0's decision."""
        up = time.perf_counter() - start_time >= self.config.run.time_limit_s
        if self.dist.enabled:
            flag = torch.tensor([float(up)], device=self.device)
            torch.distributed.broadcast(flag, src=0)
            up = bool(flag.item())
        return up

    def dry_run(self) -> dict[str, Any]:
        """One training step at the configured crop and batch; nothing is written.

        Returns ``{"peak_memory_bytes", "memory_kind", "seconds", "loss", "micro_batch",
        "crop"}``; on CUDA the peak is ``max_memory_allocated``, on CPU the increase of the
        peak resident set size over the resident size before the step.
        """
        try:
            return self._dry_run()
        finally:
            self._close()

    def _dry_run(self) -> dict[str, Any]:
        run = self.config.run
        crop = tuple(self.config.input.crop)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        else:
            reset_peak_rss()
            base = current_rss_bytes()
        start = time.perf_counter()
        if self.train_dataset is not None:
            self._build_loader()
            losses, _ = self._train_step()
        else:
            num_classes = self.criterion.num_classes
            num_things = model_spec(self.model).kwargs["num_thing_classes"]
            batches = [random_batch(self.micro_batch, crop, num_classes, num_things, seed=i)
                       for i in range(run.accumulate)]
            losses, _ = self._train_step(iter(batches))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            kind = "CUDA max_memory_allocated"
        else:
            # The kernel folds the resident count into the peak lazily: clamp the few pages
            # by which the current size can lead it.
            peak = max(0, peak_rss_bytes() - base)
            kind = "CPU peak RSS increase"
        seconds = time.perf_counter() - start
        return {"peak_memory_bytes": int(peak), "memory_kind": kind,
                "baseline_bytes": int(base), "seconds": seconds,
                "loss": float(losses["loss"]), "micro_batch": self.micro_batch,
                "accumulate": run.accumulate, "crop": list(crop),
                "device": str(self.device), "model": self.config.model.name}

    def evaluate(self) -> dict[str, Any] | None:
        """PQ on the val split (rank 0; the others wait). Logged and appended to eval.json."""
        if self.val_dataset is None:
            return None
        result = None
        if self.dist.is_main:
            ev = self.config.evaluation
            thresholds = {"class_threshold": ev.class_threshold,
                          "pixel_threshold": ev.pixel_threshold,
                          "thing_area_limit": ev.thing_area_limit,
                          "stuff_area_limit": ev.stuff_area_limit}
            if ev.method == "maskwise":  # its own thresholds; keep only the area limits
                thresholds = {k: v for k, v in thresholds.items() if "area" in k}
            try:
                result = evaluate_model(self.model, self.val_dataset, self.config.eval_size,
                                        self.device, ev.method, ev.max_images, ev.batch_size,
                                        **thresholds)
            finally:
                self.model.train()
            entry = {"step": self.step, "pq": 100 * result["All"]["pq"],
                     "pq_things": 100 * result["Things"]["pq"],
                     "pq_stuff": 100 * result["Stuff"]["pq"],
                     "sq": 100 * result["All"]["sq"], "rq": 100 * result["All"]["rq"],
                     "miou": 100 * result["miou"], "num_images": result["num_images"]}
            self.eval_history.append(entry)
            atomic_write_json(self.out_dir / "eval.json", self.eval_history, indent=1)
            writer = self._tensorboard()
            if writer is not None:
                for key in ("pq", "pq_things", "pq_stuff", "sq", "rq", "miou"):
                    writer.add_scalar(f"eval/{key}", entry[key], self.step)
            tqdm.write(f"step {self.step}: PQ {entry['pq']:.2f} (things {entry['pq_things']:.2f}"
                       f", stuff {entry['pq_stuff']:.2f}), mIoU {entry['miou']:.2f} on "
                       f"{entry['num_images']} images")
        self.dist.barrier()
        return result

    def save_state(self) -> Path | None:
        """Writes the training state of the current step (rank 0; RNG states of every rank)."""
        rng_states = self.dist.gather_objects(
            {"global": capture_rng_state(), "loss": self.loss_generator.get_state()})
        path = None
        if self.dist.is_main:
            state = {
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.dist.world_size,
                # Images of this epoch consumed by all processes: the position another world
                # size resumes from (engine.distributed.reshard_position).
                "images_in_epoch": self.batch_in_epoch * self.micro_batch * self.dist.world_size,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_states,
                "eval_history": self.eval_history,
            }
            path = save_training_state(self.out_dir, self.step, self.model, self.optimizer,
                                       state, self.model_dir_config(), self.config.run.keep_last)
        self.dist.barrier()
        return path

    def model_dir_config(self) -> dict[str, Any]:
        """The ``config.yaml`` content besides the model: categories, input sizes, the run."""
        return {
            "data": self.info.to_dict(),
            "input": {"crop": list(self.config.input.crop),
                      "eval_size": list(self.config.eval_size)},
            "postprocess": {"method": self.config.evaluation.method},
            "train": self.config.to_dict(),
            "step": self.step,
        }

    # --- internals -------------------------------------------------------------------------

    def _restore(self) -> None:
        checkpoint = latest_checkpoint(self.out_dir)
        check_same_checkpoint(self.dist.gather_objects(checkpoint and checkpoint.name),
                              self.out_dir)
        if checkpoint is None:
            if self.dist.is_main:
                tqdm.write(f"--resume: no complete training state in {self.out_dir}; "
                           "starting from step 0")
            return
        # The current config owns the hyper-parameters and the lr curve (a longer run stretches
        # the poly decay); the checkpoint owns the moments and the position. With an unchanged
        # config both agree to the bit, so an exact resume stays exact.
        configured = [{k: v for k, v in group.items() if k != "params"}
                      for group in self.optimizer.param_groups]
        base_lrs = list(self.scheduler.base_lrs)
        loaded = load_training_state(checkpoint, self.model, self.optimizer)
        state = loaded["state"]
        self._warn_config_changes()
        if state.get("world_size", 1) != self.dist.world_size:
            run = self.config.run
            consumed = state.get("images_in_epoch",
                                 state["batch_in_epoch"] * run.batch_size // run.accumulate)
            position = reshard_position(state["epoch"], consumed, state.get("world_size", 1),
                                        self.micro_batch, self.dist.world_size)
            state["epoch"], state["batch_in_epoch"], note = position
            if self.dist.is_main:
                warnings.warn(note, stacklevel=2)
        self.step = loaded["step"]
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        scheduler_state = dict(state["scheduler"])
        scheduler_state["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)  # keep ours
        self.scheduler.load_state_dict(scheduler_state)
        self.scheduler.base_lrs = base_lrs
        schedule = self.scheduler.lr_lambdas[0]
        for group, settings, base in zip(self.optimizer.param_groups, configured, base_lrs,
                                         strict=True):
            group.update(settings)
            group["initial_lr"] = base
            group["lr"] = base * schedule(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.eval_history = list(state.get("eval_history") or [])
        rng = state["rng"]
        if self.dist.rank < len(rng):
            restore_rng_state(rng[self.dist.rank]["global"])
            self.loss_generator.set_state(rng[self.dist.rank]["loss"])
        else:  # a process the saved run did not have: fresh streams of its own
            _seed_everything(self.config.run.seed + 1_000_003 * self.dist.rank + self.step)
            self.loss_generator.manual_seed(self.config.run.seed * 7919 + self.dist.rank
                                            + self.step)
        if self.dist.is_main:
            tqdm.write(f"resumed from {checkpoint} (step {self.step}, epoch {self.epoch})")

    def _warn_config_changes(self) -> None:
        """Resuming with other settings is allowed (e.g. more steps) but worth a warning."""
        previous_file = self.out_dir / "train_config.yaml"
        if not self.dist.is_main or not previous_file.is_file():
            return
        try:
            previous = yaml.safe_load(previous_file.read_text())
        except (OSError, yaml.YAMLError):
            return
        changed = [key for key in _changed_keys(previous, to_plain(self.config.to_dict()))
                   if key not in _BOOKKEEPING_KEYS and not key.startswith("evaluation.")]
        if changed:
            warnings.warn(f"resuming {self.out_dir} with changed settings: {', '.join(changed)}"
                          " (the run will not match an uninterrupted one)", stacklevel=3)

    def _build_loader(self) -> None:
        run = self.config.run
        dataset = self.train_dataset
        self._sampler = ResumableSampler(dataset, num_replicas=self.dist.world_size,
                                         rank=self.dist.rank, seed=run.seed)
        if len(self._sampler) < self.micro_batch:
            raise ValueError(
                f"the training split has {len(dataset)} images, fewer than one batch of "
                f"{self.micro_batch} per process x {self.dist.world_size} process(es)"
            )
        self._loader_generator = torch.Generator()
        self._loader = DataLoader(
            dataset, batch_size=self.micro_batch, sampler=self._sampler,
            num_workers=run.num_workers, collate_fn=collate_batch, drop_last=True,
            pin_memory=self.device.type == "cuda", generator=self._loader_generator,
            worker_init_fn=_seed_worker,
        )
        self._iterator = None

    def _next_batch(self) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The next micro-batch, starting a new epoch (new order) when one runs out."""
        while True:
            if self._iterator is None:
                self._sampler.set_position(self.epoch, self.batch_in_epoch * self.micro_batch)
                self.train_dataset.set_epoch(self.epoch)
                self._loader_generator.manual_seed(self.config.run.seed * 1_000_003 + self.epoch)
                self._iterator = iter(self._loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            self.batch_in_epoch += 1
            return batch

    def _train_step(
        self, batches: Iterator | None = None
    ) -> tuple[dict[str, torch.Tensor], float | None]:
        """One optimizer step over ``run.accumulate`` micro-batches; returns this process's
        loss terms averaged over them (detached) and the gradient norm (if it was computed)."""
        run = self.config.run
        step = self.step + 1
        losses: dict[str, torch.Tensor] = {}
        step_losses = None  # the loss terms stacked, summed over the micro-batches
        for micro in range(run.accumulate):
            images, targets = next(batches) if batches is not None else self._next_batch()
            images = images.to(self.device, non_blocking=True,
                                memory_format=self.memory_format)
            sync = micro == run.accumulate - 1 or not self.dist.enabled
            context = (self.train_model.no_sync() if not sync else contextlib.nullcontext())
            with context:
                error = None
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    outputs = self.train_model(images)
                    try:
                        losses = self.criterion(outputs, targets)
                    except FloatingPointError as exc:
                        error = exc
                # Every rank must agree before backward, or the others hang in all-reduce.
                if self.dist.any_true(error is not None, self.device):
                    where = f"rank {self.dist.rank}: {error}" if error is not None else \
                        "another rank had a non-finite loss"
                    raise FloatingPointError(
                        f"non-finite loss at step {step} ({where}); stopped before the "
                        f"optimizer step, nothing written{self._last_good()}")
                stacked = torch.stack([value.detach() for value in losses.values()])
                step_losses = stacked if step_losses is None else step_losses + stacked
                loss = losses["loss"] / run.accumulate
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
        grad_norm = self._check_and_clip_gradients(step)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return dict(zip(losses, (step_losses / run.accumulate).unbind(), strict=True)), grad_norm

    def _check_and_clip_gradients(self, step: int) -> float | None:
        """Raises on a non-finite gradient (naming the parameter); clips if configured.

        With fp16 the scaler owns overflow handling (it skips such steps), so only clipping
        applies.
        """
        run = self.config.run
        params = [p for p in self._parameters_list if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
            if run.grad_clip > 0:
                return float(torch.nn.utils.clip_grad_norm_(params, run.grad_clip))
            return None
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not bool(torch.isfinite(norm)):
            name = next(n for n, p in self.model.named_parameters()
                        if p.grad is not None and not bool(torch.isfinite(p.grad).all()))
            raise FloatingPointError(
                f"non-finite gradient of parameter {name!r} at step {step}; stopped before "
                f"the optimizer step, nothing written{self._last_good()}")
        if run.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, run.grad_clip, norm)
        return float(norm)

    def _last_good(self) -> str:
        if self.out_dir is None:
            return ""
        latest = latest_checkpoint(self.out_dir)
        return f"; the last good state is {latest}" if latest is not None else ""

    def _log(self, losses: dict[str, float], grad_norm: float | None) -> None:
        writer = self._tensorboard()
        if writer is None:
            return
        for name, value in losses.items():
            writer.add_scalar(f"loss/{name}", value, self.step)
        for group in self.optimizer.param_groups:
            writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], self.step)
        if grad_norm is not None:
            writer.add_scalar("train/grad_norm", grad_norm, self.step)
        writer.add_scalar("train/epoch", self.epoch, self.step)

    def _tensorboard(self) -> Any:
        if not self.dist.is_main or self.out_dir is None:
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir))
        return self._writer

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._iterator = None
        self.dist.shutdown()


# --- helpers -------------------------------------------------------------------------------


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "none":
        return None
    if device.type != "cuda":
        warnings.warn(f"run.amp={mode} applies on CUDA only: training in float32 on "
                      f"{device.type}", stacklevel=3)
        return None
    return torch.bfloat16 if mode == "bf16" else torch.float16


def _wrap_distributed(
    model: nn.Module, criterion: PanopticCriterion, device: torch.device
) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    unused = _unused_parameters(model, criterion, device)
    if device.type == "cuda":
        # deeplab2 trains with synchronized BN; torch syncs BN on accelerators only, so on
        # CPU (gloo) each process normalises with its own batch statistics.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index],
                                       find_unused_parameters=bool(unused))
    return DistributedDataParallel(model, find_unused_parameters=bool(unused))


def _unused_parameters(
    model: nn.Module, criterion: PanopticCriterion, device: torch.device
) -> list[str]:
    """Trainable parameters that get no gradient from the loss (e.g. the semantic head when
    its weight is 0), found with one small random step; the model state is left unchanged.

    DDP needs ``find_unused_parameters=True`` exactly when this is not empty.
    """
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    rng = torch.get_rng_state()
    num_things = model_spec(model).kwargs["num_thing_classes"]
    images, targets = random_batch(2, (65, 65), criterion.num_classes, num_things)
    generator, criterion.generator = criterion.generator, None
    try:
        criterion(model(images.to(device)), targets)["loss"].backward()
    finally:
        criterion.generator = generator
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    torch.set_rng_state(rng)
    return unused


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key),
                                                         f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """Loader workers: Python and numpy seeded from the loader's per-epoch base seed."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} GiB"

