"""Training-step throughput on CPU (``train_cpu.py --speed``): ours against HF Mask2Former-R50.

One step = forward, every loss term with Hungarian matching, backward and the optimizer, as
``Trainer`` runs it. MACs of a step are counted with FlopCounterMode (forward + backward, FLOPs
/ 2) for every model alike. CMT-DeepLab-S and Mask2Former-R50 (a ratio) are timed in
alternating rounds so that load changes hit both. The tiny preset's images/s (an absolute
target) is timed as a training run takes its steps: back to back, before the large models
exist; interleaved with the 7-second CMT-S step (cold caches, a heap reshaped by gigabytes of
activations) the same tiny step measured ~15% slower (2026-11-28: 33.3-35.0 against
40.8-42.0 images/s, batch 8).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

import hf_models
import torch
from _common import (
    alternating_medians,
    count_forward_macs,
    host_probe,
    median_seconds,
    report_load,
)

from cmt_deeplab.data.random_batch import random_batch
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.config import load_train_config
from cmt_deeplab.engine.trainer import Trainer


def _trainer_step(config_name: str, values: dict, data_root: Path | None,
                  crop: tuple[int, int], batch: int) -> tuple[Callable[[], None], int]:
    """A closure running one ``Trainer`` step on pre-loaded batches, and its images per step."""
    values = {**values, "run.batch_size": batch, "run.num_workers": 0, "run.eval_every": 0,
              "data.val_split": None,
              "input.crop": list(crop)}
    if data_root is not None:
        values["data.root"] = str(data_root)
    else:  # random batches with the config's class counts, like ``train --dry-run``
        values["data.train_split"] = None
    trainer = Trainer(load_train_config(config_name, values=values), None, progress=False)
    if trainer.train_dataset is not None:
        batches = [trainer.next_batch() for _ in range(4)]
    else:
        batches = [random_batch(batch, crop, trainer.num_classes, trainer.num_thing_classes,
                                seed=i) for i in range(2)]
    cycle = itertools.cycle(batches)
    return (lambda: trainer.train_step(cycle)), batch


def _mask2former_step(size: int, batch: int) -> tuple[Callable[[], None], int]:
    model = hf_models.mask2former_r50().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _, targets = random_batch(batch, (size, size), 133, 80, seed=0)
    images = torch.randn(batch, 3, size, size)
    masks = [t["masks"].float() for t in targets]
    labels = [t["labels"] for t in targets]

    def step() -> None:
        loss = model(pixel_values=images, mask_labels=masks, class_labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, batch


def run(threads: int, rounds: int, tiny_batches: tuple[int, ...], large_size: int,
        peers: bool) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(report_load())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_synthetic_dataset(root, "train", num_images=64, size=96, seed=0, workers=1)
        steps: dict[str, tuple[Callable[[], None], int]] = {}
        macs: dict[str, int] = {}
        seconds: dict[str, float] = {}
        preset = load_train_config("synthetic_cmt_deeplab_tiny")
        crop = tuple(preset.input.crop)
        for batch in tiny_batches:
            name = f"cmt-deeplab-tiny {crop[0]}x{crop[1]} batch {batch}"
            steps[name] = _trainer_step("synthetic_cmt_deeplab_tiny", {}, root, crop, batch)
            step = steps[name][0]
            macs[name] = count_forward_macs(step)
            print(f"{name}: before, {host_probe()}", flush=True)
            seconds[name] = median_seconds(step, repeats=10 * rounds, warmup=5)
            print(f"{name}: after, {host_probe()}", flush=True)
        large = (large_size, large_size)
        steps[f"cmt-deeplab-s {large_size}x{large_size} batch 1"] = _trainer_step(
            "coco_cmt_deeplab_s", {"run.device": "cpu", "run.amp": "none"}, None, large, 1)
        if peers and hf_models.available():
            steps[f"mask2former-r50 {large_size}x{large_size} batch 1"] = _mask2former_step(
                large_size, 1)
        elif peers:
            print("transformers is not installed: pip install -c constraints.txt -e '.[bench]' "
                  "for the Mask2Former peer")
        ratio_steps = {name: step for name, (step, _) in steps.items() if name not in seconds}
        for name, step in ratio_steps.items():
            step()  # warm-up (and optimizer state allocation)
            macs[name] = count_forward_macs(step)
        seconds.update(alternating_medians(ratio_steps, rounds))
    print(f"\n{'training step':38} {'s/step':>8} {'img/s':>7} {'GMACs':>8} {'GMAC/s':>7}")
    speed = {}
    for name, (_, batch) in steps.items():
        speed[name] = macs[name] / 1e9 / seconds[name]
        print(f"{name:38} {seconds[name]:8.3f} {batch / seconds[name]:7.1f} {macs[name] / 1e9:8.1f} "
              f"{speed[name]:7.1f}")
    for name in steps:
        if name.startswith("cmt-deeplab-tiny"):
            batch = steps[name][1]
            target = ("the preset's batch: target >= 40 on 2 cores" if batch == preset.run.batch_size
                      else f"the preset trains at batch {preset.run.batch_size}")
            print(f"{name}: {batch / seconds[name]:.1f} img/s ({target})")
    ours = next(n for n in steps if n.startswith("cmt-deeplab-s"))
    peer = next((n for n in steps if n.startswith("mask2former")), None)
    if peer is not None:
        print(f"CMT-DeepLab-S / Mask2Former-R50 training GMAC/s: {speed[ours] / speed[peer]:.2f}")
    print(report_load())
