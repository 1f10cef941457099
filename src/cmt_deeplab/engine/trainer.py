"""The training loop: ``Trainer(config, out_dir).train()``.

One optimizer step = ``run.accumulate`` micro-batches of ``run.batch_size / (world_size x
accumulate)`` images per process (``engine.train_step``). Everything random is seeded from
``run.seed``: the model initialisation, the data order and augmentation (``engine.batches``),
the loss's pixel sampling (its own generator) and the global RNGs (drop path). A training
state holds all of them plus the optimizer, the schedule and the position in the epoch
(``engine.resume``), so a resumed run continues with bit-identical weights (on the same
hardware and thread count).

Output directory::

    OUT/train_config.yaml      the resolved config
    OUT/checkpoints/step_*/    training states (``engine.training_state``), the newest
                               ``keep_last``
    OUT/events.*               TensorBoard scalars (``engine.train_log``)
    OUT/eval.json              PQ after each evaluation
    OUT/pretrained.json        what a pretrained start (``init``) loaded, left new, skipped
    OUT/model.safetensors      the final model, with OUT/config.yaml (``cmt_deeplab.model_dir``)

Only rank 0 writes. A non-finite loss term or gradient stops the run before the optimizer
step and before anything is written, so the newest checkpoint is the last good state.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from tqdm import tqdm

from cmt_deeplab.engine.batches import Batch, TrainBatches
from cmt_deeplab.engine.config import TrainConfig
from cmt_deeplab.engine.datasets import open_datasets
from cmt_deeplab.engine.ddp import wrap_distributed
from cmt_deeplab.engine.distributed import DistributedContext
from cmt_deeplab.engine.dry_run import dry_run
from cmt_deeplab.engine.evaluate import evaluate_model
from cmt_deeplab.engine.optim import build_optimizer, build_scheduler, set_schedule_end
from cmt_deeplab.engine.preflight import preflight
from cmt_deeplab.engine.resume import resume_latest, training_state
from cmt_deeplab.engine.rng_state import seed_everything
from cmt_deeplab.engine.time_budget import TimeBudget
from cmt_deeplab.engine.train_log import TrainLog
from cmt_deeplab.engine.train_step import TrainStep
from cmt_deeplab.engine.training_state import list_checkpoints, save_training_state
from cmt_deeplab.losses.criterion import PanopticCriterion
from cmt_deeplab.model_dir import save_model_dir, unwrap_model
from cmt_deeplab.models import build_model, set_recompute
from cmt_deeplab.pretrained import PretrainedReport, load_pretrained
from cmt_deeplab.utils.allocator import keep_freed_memory
from cmt_deeplab.utils.device import resolve_device
from cmt_deeplab.utils.io import atomic_write_json, atomic_write_text, read_json
from cmt_deeplab.utils.plain import to_plain

#: COCO's class counts: the model of a ``--dry-run`` without data.
DEFAULT_CLASSES = (133, 80)
#: The report of a pretrained start (``init``), written before the first step.
PRETRAINED_FILE = "pretrained.json"


class Trainer:
    """Trains the model a ``TrainConfig`` describes and writes into ``out_dir``.

    Args:
        config: the full configuration.
        out_dir: output directory (see the module notes); ``None`` only for ``dry_run``.
        resume: continue from the newest complete training state in ``out_dir`` (a fresh
            start when there is none). Without it, an ``out_dir`` that already holds training
            states is an error, so a run is never overwritten by accident.
        progress: show a tqdm progress bar (rank 0).
        check_memory: refuse, before anything is loaded, settings whose estimated memory
            exceeds the machine's (``engine.preflight``).
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path | None,
        resume: bool = False,
        progress: bool = True,
        check_memory: bool = True,
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

        seed_everything(run.seed)
        self.train_dataset, self.val_dataset, self.info = open_datasets(config)
        self.num_classes, self.num_thing_classes = (
            (self.info.num_classes, self.info.num_thing_classes) if self.info is not None
            else DEFAULT_CLASSES)  # no data: a dry run on random batches
        preflight(config, self.device, self.micro_batch, self.num_classes,
                  self.num_thing_classes, loads_data=self.train_dataset is not None
                  and self.out_dir is not None, check_memory=check_memory,
                  check_schedule=self.out_dir is not None)
        model = build_model(config.model.name, num_classes=self.num_classes,
                            num_thing_classes=self.num_thing_classes,
                            num_slots=config.model.num_slots, **config.model.overrides)
        self.pretrained = self._pretrained_start(model)
        set_recompute(model, config.model.recompute)
        self.model = model.to(self.device).train()
        self.memory_format = (torch.channels_last if run.channels_last
                              else torch.contiguous_format)
        self.model.to(memory_format=self.memory_format)
        # Each rank gets its own stream for drop path; the model init above is shared.
        seed_everything(run.seed + 1_000_003 * self.dist.rank)
        self.loss_generator = torch.Generator(device=self.device).manual_seed(
            run.seed * 7919 + self.dist.rank)
        # ``blocks`` recomputes the loss terms too: at COCO crops they keep more than the
        # recomputed network does.
        self.criterion = PanopticCriterion(self.num_classes, config.loss, self.loss_generator,
                                           recompute=config.model.recompute == "blocks")
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            self.train_model = wrap_distributed(self.model, self.criterion,
                                                self.num_thing_classes, self.device)
            self.model = unwrap_model(self.train_model)  # SyncBatchNorm layers inside
        self.optimizer = build_optimizer(self.model, config.optimizer, self.pretrained.loaded
                                         if self.pretrained is not None else ())
        self.scheduler = build_scheduler(self.optimizer, config.schedule, run.steps)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.update = TrainStep(
            self.train_model, self.model, self.criterion, self.optimizer, self.scaler,
            self.amp_dtype, self.memory_format, run.accumulate, run.grad_clip, self.dist,
            self.device, self.out_dir)
        self.batches = None if self.train_dataset is None else TrainBatches(
            self.train_dataset, self.micro_batch, run.seed, run.num_workers, self.dist,
            pin_memory=self.device.type == "cuda")
        self.step = 0
        self.total_steps = run.steps  # shortened by run.fit_time_limit as the run goes
        self.eval_history: list[dict[str, Any]] = []
        self.log = TrainLog(self.out_dir if self.dist.is_main else None)
        #: How the user continues a run stopped by its time limit (the demo says its own).
        self.resume_hint = "rerun with --resume to go on"

    def _pretrained_start(self, model: nn.Module) -> PretrainedReport | None:
        """Loads ``init.checkpoint`` into ``model`` on a fresh run and records the report in
        ``out_dir/pretrained.json``; a resumed run reads the record back (its weights come from
        its training state; the record names the tensors the backbone multiplier slows)."""
        init = self.config.init
        if init.checkpoint is None or self.out_dir is None:
            return None  # a dry run times one step: the starting values do not matter
        record = self.out_dir / PRETRAINED_FILE
        if self.resume and list_checkpoints(self.out_dir):
            if not record.is_file():
                return None
            return PretrainedReport.from_dict(read_json(record, "pretrained-start record"))
        try:
            report = load_pretrained(model, init.checkpoint, init.backbone_only or None,
                                     init.strict)
        except (FileNotFoundError, ValueError) as error:
            raise type(error)(f"pretrained start (init.checkpoint): {error}; --init-from none "
                              "trains from scratch") from None
        if self.dist.is_main:
            tqdm.write(report.table(model))
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(record, report.to_dict())
        return report

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
            self.close()  # also on errors: TensorBoard flushed, process group left

    def dry_run(self) -> dict[str, Any]:
        """One training step at the configured crop and batch, nothing written
        (``engine.dry_run``)."""
        try:
            return dry_run(self)
        finally:
            self.close()

    def next_batch(self) -> Batch:
        """The next micro-batch of the training split (``engine.batches``)."""
        return next(self.batches)

    def train_step(self, batches: Iterator[Batch] | None = None) -> tuple[
            dict[str, torch.Tensor], float | None]:
        """One optimizer step on the next ``run.accumulate`` micro-batches (of ``batches``,
        default the training split), then the lr schedule's; counts it in ``step``.

        Returns:
            This process's loss terms averaged over the micro-batches (detached) and the
            gradient norm (if computed).
        """
        next_batch = self.next_batch if batches is None else batches.__next__
        losses, grad_norm = self.update(next_batch, self.step + 1)
        self.scheduler.step()
        self.step += 1
        return losses, grad_norm

    def resume_latest(self) -> Path | None:
        """Loads the newest complete training state of ``out_dir`` (``engine.resume``)."""
        return resume_latest(self)

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
            self.log.evaluation(self.step, entry)
            tqdm.write(f"step {self.step}: PQ {entry['pq']:.2f} (things {entry['pq_things']:.2f}"
                       f", stuff {entry['pq_stuff']:.2f}), mIoU {entry['miou']:.2f} on "
                       f"{entry['num_images']} images")
        self.dist.barrier()
        return result

    def save_state(self) -> Path | None:
        """Writes the training state of the current step (rank 0; RNG states of every rank)."""
        state = training_state(self)
        path = None
        if self.dist.is_main:
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

    def close(self) -> None:
        """Flushes TensorBoard, stops the loader workers and leaves the process group."""
        self.log.close()
        if self.batches is not None:
            self.batches.close()
        self.dist.shutdown()

    # --- the loop --------------------------------------------------------------------------

    def _train(self) -> dict[str, Any]:
        run = self.config.run
        if self.resume:
            self.resume_latest()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "train_config.yaml",
                              yaml.safe_dump(to_plain(self.config.to_dict()), sort_keys=False))
        bar = tqdm(total=run.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and self.dist.is_main))
        budget = TimeBudget(run.time_limit_s, run.fit_time_limit, self.dist, self.device)
        budget.start(self.step)
        start_step = self.step
        last: dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                losses, grad_norm = self.train_step()
                bar.update(1)
                if budget.replan_due(self.step):
                    self.total_steps = budget.plan(self.step, run.steps)
                    set_schedule_end(self.scheduler, self.total_steps)
                    bar.total = self.total_steps
                if run.log_every and (self.step % run.log_every == 0
                                      or self.step == self.total_steps):
                    last = self.dist.mean_over_ranks(losses)  # the whole batch's mean
                    self._log(bar, last, grad_norm, budget.elapsed() / (self.step - start_step))
                if run.eval_every and self.step % run.eval_every == 0:
                    self.evaluate()
                if run.save_every and self.step % run.save_every == 0:
                    self.save_state()
                if budget.is_up():
                    tqdm.write(f"time limit of {run.time_limit_s:.0f}s reached at step "
                               f"{self.step}/{run.steps}; saving ({self.resume_hint})")
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
        elapsed = budget.elapsed()
        return {"steps": self.step, "planned_steps": self.total_steps, "seconds": elapsed,
                "seconds_per_step": elapsed / max(self.step - start_step, 1),
                "last_losses": last,
                "pq": self.eval_history[-1]["pq"] if self.eval_history else None}

    def _log(self, bar: tqdm, losses: dict[str, float], grad_norm: float | None,
             seconds_per_step: float) -> None:
        """TensorBoard scalars, and the bar's postfix (or a plain line without a bar)."""
        self.log.training(self.step, losses, self.optimizer, grad_norm, self.batches.epoch)
        lr = self.optimizer.param_groups[-1]["lr"]
        bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}")
        if bar.disable and self.dist.is_main:
            print(f"step {self.step}/{self.total_steps}: loss {losses['loss']:.4f}, lr "
                  f"{lr:.2e}, {seconds_per_step:.3f}s/step", flush=True)


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "none":
        return None
    if device.type != "cuda":
        warnings.warn(f"run.amp={mode} applies on CUDA only: training in float32 on "
                      f"{device.type}", stacklevel=3)
        return None
    return torch.bfloat16 if mode == "bf16" else torch.float16
