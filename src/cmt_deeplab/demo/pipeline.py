"""``cmt-deeplab demo``: everything the library does, on a fresh machine, in minutes.

Steps (each writes its result under ``OUT`` and is skipped when that result exists, so an
interrupted demo resumes where it stopped; training resumes from its last saved state):

1. ``data/``: the synthetic panoptic dataset (shapes on textures, COCO layout);
2. ``run/``: ``cmt-deeplab-tiny`` trained on it within a time budget (progress bar);
3. ``metrics.json``: PQ / SQ / RQ and mIoU on held-out images;
4. ``predictions/``: overlays of held-out images and of the user's own images;
5. ``maps/``: clustering and attention maps at every CMT layer;
6. ``cost.json``: the paper's Table 2 columns, paper models counted, the tiny one timed;
7. ``report.html``: one self-contained page with all of it.
"""

from __future__ import annotations

import io
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cmt_deeplab.utils.io import atomic_write_json


@dataclass(frozen=True)
class DemoSettings:
    train_images: int
    val_images: int
    image_size: int
    steps: int
    batch_size: int
    time_limit_s: float
    eval_every: int
    log_every: int
    shown_predictions: int
    cost_models: tuple[str, ...]
    training_memory: bool = True


# The synthetic benchmark's recipe (configs/synthetic_cmt_deeplab_tiny.yaml: 1,687 x 8 images).
FULL = DemoSettings(
    train_images=13500, val_images=250, image_size=96, steps=1687, batch_size=8,
    time_limit_s=600.0, eval_every=500, log_every=25, shown_predictions=8,
    cost_models=("max-deeplab-s", "cmt-deeplab-s", "cmt-deeplab-l", "cmt-deeplab-l-rfn",
                 "cmt-deeplab-tiny"),
)
QUICK = DemoSettings(
    train_images=64, val_images=16, image_size=64, steps=30, batch_size=4,
    time_limit_s=45.0, eval_every=15, log_every=3, shown_predictions=4,
    cost_models=("cmt-deeplab-s", "cmt-deeplab-tiny"),
    training_memory=False,
)


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def prepare_data(root: Path, settings: DemoSettings, seed: int) -> None:
    from cmt_deeplab.data.synthetic import generate_synthetic_dataset

    for split, count, split_seed in (("train", settings.train_images, seed),
                                     ("val", settings.val_images, seed + 1)):
        marker = root / "annotations" / f"panoptic_{split}.json"
        if marker.exists():
            _log(f"data: {split} split already in {root}")
            continue
        _log(f"data: generating {count} {split} images ({settings.image_size}px)")
        generate_synthetic_dataset(root, split, count, settings.image_size, split_seed,
                                   workers=min(2, os.cpu_count() or 1))


def _train_config(root: Path, settings: DemoSettings, seed: int):
    from cmt_deeplab.engine.config import load_train_config

    crop = settings.image_size  # the images themselves, as the preset (no padding)
    return load_train_config("synthetic_cmt_deeplab_tiny", values={
        "data.root": str(root), "input.crop": [crop, crop], "input.eval_size": [crop, crop],
        "run.steps": settings.steps, "run.batch_size": settings.batch_size, "run.seed": seed,
        "run.eval_every": settings.eval_every, "run.save_every": max(settings.eval_every // 2, 10),
        "run.log_every": settings.log_every,
        "run.time_limit_s": settings.time_limit_s, "run.device": "cpu", "run.num_workers": 1,
        # A slower machine gets a shorter, complete schedule rather than a cut-off run.
        "run.fit_time_limit": True,
        "schedule.warmup_steps": min(100, settings.steps // 10),
    })


def train(root: Path, run_dir: Path, settings: DemoSettings, seed: int, progress: bool) -> dict:
    from cmt_deeplab.engine.trainer import Trainer
    from cmt_deeplab.engine.training_state import latest_checkpoint

    summary_path = run_dir / "demo_train.json"
    if summary_path.exists() and (run_dir / "model.safetensors").exists():
        _log(f"train: done before ({run_dir})")
        return json.loads(summary_path.read_text())
    config = _train_config(root, settings, seed)
    _log(f"train: cmt-deeplab-tiny, up to {settings.steps} steps x {settings.batch_size} images, "
         f"at most {settings.time_limit_s / 60:.0f} min: the schedule is shortened to fit the "
         "time on a slower machine (Ctrl-C stops; rerun resumes)")
    # Resume only what an interrupted demo left: a first run is a fresh start, not a resume.
    trainer = Trainer(config, run_dir, resume=latest_checkpoint(run_dir) is not None,
                      progress=progress)
    trainer.resume_hint = "run the demo again to go on"
    summary = trainer.train()
    summary = {key: summary[key] for key in ("steps", "planned_steps", "seconds",
                                             "seconds_per_step", "pq")}
    summary["budget_steps"] = settings.steps
    atomic_write_json(summary_path, summary, indent=2)
    return summary


def evaluate(root: Path, run_dir: Path, out: Path) -> dict:
    from cmt_deeplab.data.coco_panoptic import CocoPanopticDataset, resolve_split
    from cmt_deeplab.engine.evaluate import evaluate_model
    from cmt_deeplab.model_dir import checkpoint_size, load_model_dir

    path = out / "metrics.json"
    if path.exists():
        _log("evaluate: done before")
        return json.loads(path.read_text())
    model, config = load_model_dir(run_dir, "cpu")
    dataset = CocoPanopticDataset(*resolve_split(root, "val"))
    _log(f"evaluate: PQ on {len(dataset)} held-out images")
    result = evaluate_model(model, dataset, checkpoint_size(config), "cpu", batch_size=16)
    metrics = {group: result[group] for group in ("All", "Things", "Stuff")}
    metrics.update(miou=result["miou"], num_images=result["num_images"],
                   per_class={str(k): v for k, v in result["per_class"].items()})
    atomic_write_json(path, metrics, indent=2)
    return metrics


def predict(root: Path, run_dir: Path, out: Path, settings: DemoSettings,
            user_images: list[Path]) -> list[dict]:
    from cmt_deeplab.data.coco_panoptic import resolve_split
    from cmt_deeplab.data.image_io import load_image
    from cmt_deeplab.inference.predictor import Predictor
    from cmt_deeplab.utils.io import atomic_write_bytes
    from cmt_deeplab.visualization.overlay import draw_overlay

    folder = out / "predictions"
    index_path = folder / "index.json"
    if index_path.exists():
        _log("predict: done before")
        return json.loads(index_path.read_text())
    predictor = Predictor.from_checkpoint(run_dir, device="cpu")
    images_dir = resolve_split(root, "val").images_dir
    held_out = sorted(images_dir.iterdir())[: settings.shown_predictions]
    entries = []
    _log(f"predict: {len(held_out)} held-out images and {len(user_images)} of yours")
    for path, source in [(p, "held-out") for p in held_out] + [(p, "yours") for p in user_images]:
        image = load_image(path)
        result = predictor(image)
        overlay = draw_overlay(image, result.panoptic, result.segments_info, predictor.info)
        if max(overlay.size) < 256:  # small synthetic images: enlarge for the page
            scale = 256 / max(overlay.size)
            overlay = overlay.resize((round(overlay.width * scale), round(overlay.height * scale)),
                                     Image.NEAREST)
        name = f"{source}_{path.stem}.png"
        buffer = io.BytesIO()
        overlay.save(buffer, format="PNG")
        atomic_write_bytes(folder / name, buffer.getvalue())
        names = sorted({predictor.info.categories[predictor.info.contiguous_id(s["category_id"])].name
                        for s in result.segments_info})
        entries.append({"file": name, "source": source, "image": str(path),
                        "segments": len(result.segments_info), "classes": names})
    atomic_write_json(index_path, entries, indent=2)
    return entries


def maps(root: Path, run_dir: Path, out: Path) -> dict:
    from cmt_deeplab.data.coco_panoptic import resolve_split
    from cmt_deeplab.model_dir import checkpoint_size, dataset_info, load_model_dir
    from cmt_deeplab.visualization.visualize import save_visualization, visualize

    folder = out / "maps"
    if (folder / "density.json").exists():
        _log("maps: done before")
        return json.loads((folder / "density.json").read_text())
    model, config = load_model_dir(run_dir, "cpu")
    info = dataset_info(config)
    image = sorted(resolve_split(root, "val").images_dir.iterdir())[0]
    _log(f"maps: clustering and attention at every layer for {image.name}")
    result = visualize(model, info, image, size=checkpoint_size(config), max_slots=4, device="cpu")
    save_visualization(result, folder)
    return json.loads((folder / "density.json").read_text())


def cost(out: Path, settings: DemoSettings, crop: int) -> list[dict]:
    from cmt_deeplab.cost import measure_cost, measure_training_memory

    path = out / "cost.json"
    if path.exists():
        _log("cost: done before")
        return json.loads(path.read_text())
    rows = []
    for name in settings.cost_models:
        tiny = name.endswith("tiny")
        _log(f"cost: {name}" + (" (timed)" if tiny else " (counted on the meta device)"))
        height, width = (crop, crop) if tiny else (800, 1200)
        row = measure_cost(name, height, width, timing=tiny, device="cpu").to_dict()
        if tiny and settings.training_memory:
            row["train_mem_bytes"], row["train_mem_kind"] = measure_training_memory(name, (crop, crop), "cpu")
        rows.append(row)
    atomic_write_json(path, rows, indent=2)
    return rows


def run_demo(out: str | Path, quick: bool = False, images: list[str] | None = None,
             seed: int = 0, progress: bool = True, time_limit_s: float | None = None) -> Path:
    """Runs (or resumes) the demo into ``out``; returns the path of ``report.html``."""
    from cmt_deeplab.demo.report import write_report

    out = Path(out)
    settings = QUICK if quick else FULL
    if time_limit_s is not None:
        settings = DemoSettings(**{**asdict(settings), "time_limit_s": float(time_limit_s)})
    user_images = [Path(p) for p in images or []]
    missing = [str(p) for p in user_images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"--images: not found: {', '.join(missing)}")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)) if quick else torch.get_num_threads())
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    root, run_dir = out / "data", out / "run"
    prepare_data(root, settings, seed)
    training = train(root, run_dir, settings, seed, progress)
    metrics = evaluate(root, run_dir, out)
    predictions = predict(root, run_dir, out, settings, user_images)
    density = maps(root, run_dir, out)
    costs = cost(out, settings, settings.image_size)
    context: dict[str, Any] = {
        "settings": asdict(settings), "quick": quick, "training": training, "metrics": metrics,
        "predictions": predictions, "density": density, "cost": costs,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}, Python {platform.python_version()}",
        "elapsed_s": time.perf_counter() - start,
    }
    report = write_report(out, context)
    pq = 100 * metrics["All"]["pq"]
    _log(f"PQ {pq:.1f} on {metrics['num_images']} held-out images "
         "(target >= 45 for the full demo)")
    return report


__all__ = ["FULL", "QUICK", "DemoSettings", "run_demo"]
