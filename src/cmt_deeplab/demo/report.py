"""The demo's ``report.html``: metrics, curves, predictions, maps and the cost table on one
self-contained page (every image embedded; opens offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from cmt_deeplab.cost.paper import PAPER_TABLE2
from cmt_deeplab.demo.charts import line_chart
from cmt_deeplab.demo.html import escape, image_tag, page, table
from cmt_deeplab.utils.io import atomic_write_text


def read_scalars(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """Every TensorBoard scalar the trainer logged in ``run_dir``: ``tag -> [(step, value)]``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[float, float]]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(dict(values).items()) for tag, values in scalars.items()}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _metrics_section(metrics: dict[str, Any], training: dict[str, Any], quick: bool) -> str:
    pq = 100 * metrics["All"]["pq"]
    target = "" if quick else (
        f" <span class='{'good' if pq >= 45 else 'bad'}'>(target >= 45: "
        f"{'met' if pq >= 45 else 'not met'})</span>")
    rows = [(group, _pct(metrics[group]["pq"]), _pct(metrics[group]["sq"]),
             _pct(metrics[group]["rq"]), metrics[group]["n"]) for group in ("All", "Things", "Stuff")]
    steps = training.get("steps")
    budget = training.get("budget_steps")
    planned = ("" if budget in (None, steps) else
               f" of the recipe's {budget} (the schedule was shortened to fit the time limit "
               "on this machine)")
    return (f"<h2>Panoptic quality on {metrics['num_images']} held-out images</h2>"
            f"<p>PQ <b>{pq:.1f}</b>{target}; mIoU {_pct(metrics['miou'])}. "
            f"cmt-deeplab-tiny trained {steps} steps{planned} "
            f"({training.get('seconds', 0) / 60:.1f} min, "
            f"{training.get('seconds_per_step', 0):.2f} s/step).</p>"
            + table(["", "PQ", "SQ", "RQ", "classes"], rows))


def _curves_section(run_dir: Path) -> str:
    scalars = read_scalars(run_dir)
    losses = {tag.split("/", 1)[-1]: values for tag, values in scalars.items()
              if tag.startswith("loss/") and "aux_" not in tag}
    charts = []
    if losses:
        total = {k: v for k, v in losses.items() if k in ("loss",)}
        terms = {k: v for k, v in losses.items() if k != "loss"}
        charts.append(line_chart(total or losses, "training loss", ylabel="loss"))
        if terms:
            charts.append(line_chart(terms, "loss terms (final output)", ylabel="loss",
                                     log_y=_spread(terms) > 30))
    lrs = {tag.split("/", 1)[-1]: values for tag, values in scalars.items()
           if tag.startswith("lr/")}
    if lrs:
        charts.append(line_chart(_merge_equal(lrs), "learning rate (warm-up, then poly decay)",
                                 ylabel="lr"))
    pq = {tag.split("/", 1)[-1]: values for tag, values in scalars.items()
          if tag in ("eval/pq", "eval/pq_things", "eval/pq_stuff")}
    if pq:
        charts.append(line_chart(pq, "PQ on held-out images", ylabel="PQ (%)"))
    return "<h2>Training curves</h2>" + ("".join(charts) or "<p class='note'>No logged scalars.</p>")


def _merge_equal(series: dict[str, list[tuple[float, float]]]) -> dict[str, list]:
    """Series with identical points drawn once, named together (parameter groups that share
    a learning rate would otherwise hide one another)."""
    merged: dict[tuple, list[str]] = {}
    for name, points in series.items():
        merged.setdefault(tuple(points), []).append(name)
    return {", ".join(names): list(points) for points, names in merged.items()}


def _spread(series: dict[str, list[tuple[float, float]]]) -> float:
    """Largest over smallest positive value of all series (a log axis above ~30)."""
    values = [y for points in series.values() for _, y in points if y > 0]
    return max(values) / min(values) if values else 1.0


def _predictions_section(out: Path, predictions: list[dict[str, Any]]) -> str:
    figures = []
    for entry in predictions:
        with Image.open(out / "predictions" / entry["file"]) as image:
            tag = image_tag(image, entry["file"], width=min(256, image.width))
        caption = f"{entry['source']}: {entry['segments']} segments ({', '.join(entry['classes'])})"
        figures.append(f"<figure>{tag}<figcaption>{escape(caption)}</figcaption></figure>")
    return ("<h2>Predictions</h2><p class='note'>Segment colours by class, contours per segment; "
            "pixel-wise post-processing as MaX-DeepLab.</p>"
            f"<div class='gallery'>{''.join(figures)}</div>")


def _maps_section(out: Path, density: dict[str, Any]) -> str:
    parts = ["<h2>Inside the clusters</h2>",
             "<p class='note'>One row per cluster centre of the final segments, one column per CMT "
             "layer. Clustering = the soft assignment of pixels to that centre; attention = the "
             "cross-attention over pixels averaged across heads. Each map is min-max normalised to "
             "[0, 255] with no smoothing (supplementary §3).</p>"]
    for kind in ("clustering", "attention"):
        path = out / "maps" / f"{kind}.png"
        if path.exists():
            with Image.open(path) as image:
                parts.append(f"<h3>{kind}</h3>" + image_tag(image, f"{kind} maps"))
    rows = [(r["kind"], r["layer"], f"{r['entropy']:.3f}", f"{100 * r['frac_above_10pct']:.1f}%")
            for r in density.get("rows", [])]
    if rows:
        parts.append("<h3>How dense is each map?</h3>"
                     + table(["map", "layer", "entropy (nats)", "pixels > 10% of max"], rows))
    return "".join(parts)


def _cost_section(costs: list[dict[str, Any]]) -> str:
    rows = []
    for row in costs:
        paper = PAPER_TABLE2.get(row["model"], {})
        timed = row.get("latency_s") is not None
        memory = row.get("train_mem_bytes")
        rows.append((
            row["model"], f"{row['height']}x{row['width']}", f"{row['params_paper'] / 1e6:.1f}M",
            f"{row['params'] / 1e6:.1f}M",
            paper.get("params", "-"), f"{row['gmacs']:.1f}", paper.get("gflops", "-"),
            f"{row['fps']:.1f}" if timed else "-", paper.get("fps", "-"),
            f"{memory / 2**20:.0f} MiB ({row.get('train_mem_kind')})" if memory else "-",
            paper.get("memory", "-"),
        ))
    return ("<h2>Cost (the paper's Table 2)</h2><p class='note'>Ours: parameters without the "
            "training-only auxiliary semantic head (the paper's convention), and with it; GMACs by torch's FlopCounterMode / 2 at the size shown "
            "(paper: 1200x800). Paper FPS on a V100, memory on a TPUv4; ours on this machine's CPU.</p>"
            + table(["model", "size", "params", "params + aux head", "paper params", "GMACs",
                     "paper GMACs ('GFLOPs')", "FPS", "paper FPS", "train mem / image",
                     "paper mem"], rows))


def write_report(out: Path, context: dict[str, Any]) -> Path:
    settings = context["settings"]
    body = [
        "<h1>cmt-deeplab demo</h1>",
        f"<p>CMT-DeepLab (tiny) trained from scratch on {settings['train_images']} synthetic "
        f"{settings['image_size']}px panoptic images, on {escape(context['machine'])}. "
        f"Total time {context['elapsed_s'] / 60:.1f} min"
        + (" (quick variant)" if context["quick"] else "") + ".</p>",
        _metrics_section(context["metrics"], context["training"], context["quick"]),
        _curves_section(out / "run"),
        _predictions_section(out, context["predictions"]),
        _maps_section(out, context["density"]),
        _cost_section(context["cost"]),
    ]
    path = out / "report.html"
    atomic_write_text(path, page("cmt-deeplab demo report", "".join(body)))
    return path
