"""End-to-end visualisation of one image: per-layer clustering and attention grids, an
optional CMT vs MaX comparison for the same objects, and the density table."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.inference.predictor import Predictor, to_rgb_array
from cmt_deeplab.models.registry import model_spec
from cmt_deeplab.utils.io import atomic_write_bytes, atomic_write_json
from cmt_deeplab.visualization.colormap import heatmap_overlay, to_cam_scale
from cmt_deeplab.visualization.maps import (
    ClusterMaps,
    collect_cluster_maps,
    density_table,
    render_grid,
)


@dataclass
class Visualization:
    """Arrays and figures of one image (``compare`` holds the second model's, if any)."""

    maps: ClusterMaps
    density: list[dict]
    figures: dict[str, Image.Image] = field(default_factory=dict)
    compare: ClusterMaps | None = None
    compare_density: list[dict] | None = None


def _final_regions(model: torch.nn.Module, padded: torch.Tensor) -> torch.Tensor:
    """``[N, h, w]`` bool: the pixels each slot wins in the final mask argmax."""
    with torch.no_grad():
        masks = model(padded[None])["pred_masks"][0]
    winners = masks.argmax(0)
    return torch.stack([winners == s for s in range(masks.shape[0])])


def matching_slots(
    model: torch.nn.Module, other: torch.nn.Module, padded: torch.Tensor, slots: list[int]
) -> list[int]:
    """For each slot of ``model``, the slot of ``other`` whose final region overlaps it best (IoU)."""
    mine, theirs = _final_regions(model, padded), _final_regions(other, padded)
    if mine.shape[-2:] != theirs.shape[-2:]:
        raise ValueError("the two models predict masks at different resolutions")
    matched = []
    for slot in slots:
        inter = (theirs & mine[slot]).flatten(1).sum(1).float()
        union = (theirs | mine[slot]).flatten(1).sum(1).float().clamp(min=1)
        matched.append(int((inter / union).argmax()))
    return matched


def visualize(
    model: torch.nn.Module,
    info: DatasetInfo,
    image,
    size: int | tuple[int, int] = 641,
    slots: list[int] | None = None,
    max_slots: int = 6,
    compare_model: torch.nn.Module | None = None,
    device: str | torch.device | None = None,
) -> Visualization:
    """Clustering / attention maps of ``model`` on ``image`` (path, PIL or array), at the
    paper's 641x641 input by default; ``compare_model`` (e.g. MaX-DeepLab) adds its
    attention maps for the same objects."""
    predictor = Predictor(model, info, size=size, device=device, optimize=False)  # hooks
    rgb = to_rgb_array(image)
    padded, valid = predictor.preprocess(rgb)
    shown = np.asarray(Image.fromarray(rgb).resize((valid[1], valid[0]), Image.BILINEAR))
    names = [c.name for c in info.categories]
    maps = collect_cluster_maps(predictor.model, padded, valid, shown, slots, max_slots, names)
    result = Visualization(maps, density_table(maps))
    for kind in maps.maps:
        result.figures[kind] = render_grid(maps, kind, title=f"{_model_name(model, 'model')}: {kind}")
    if compare_model is not None:
        compare_model = compare_model.to(predictor.device).eval()
        other_slots = matching_slots(predictor.model, compare_model, padded, maps.slots)
        other = collect_cluster_maps(compare_model, padded, valid, shown, other_slots, class_names=names)
        result.compare = other
        result.compare_density = density_table(other)
        name = _model_name(compare_model, "compare")
        for kind in other.maps:
            result.figures[f"compare_{kind}"] = render_grid(other, kind, title=f"{name}: {kind}")
        result.figures["side_by_side"] = side_by_side(maps, other, _model_name(model, "model"), name)
    return result


def _model_name(model: torch.nn.Module, fallback: str) -> str:
    """The registered name of a model from ``build_model``, else ``fallback`` (figure titles)."""
    try:
        return model_spec(model).name
    except ValueError:
        return fallback


def _last(maps: ClusterMaps, kind: str) -> np.ndarray | None:
    layers = [m for m in maps.maps.get(kind, []) if m is not None]
    return layers[-1] if layers else None


def side_by_side(left: ClusterMaps, right: ClusterMaps, left_name: str, right_name: str,
                 cell: int = 200) -> Image.Image:
    """The paper's Figs. 6-8: per object, the image, then each model's last-layer maps."""
    columns = [("image", None, None)]
    for kind in ("clustering", "attention"):
        if _last(left, kind) is not None:
            columns.append((f"{left_name} {kind}", left, kind))
    if _last(right, "attention") is not None:
        columns.append((f"{right_name} attention", right, "attention"))
    scale = cell / max(left.image.shape[:2])
    size = (max(1, round(left.image.shape[1] * scale)), max(1, round(left.image.shape[0] * scale)))
    thumb = np.asarray(Image.fromarray(left.image).resize(size, Image.BILINEAR))
    label_h, margin = 14, 4
    canvas = Image.new("RGB", (len(columns) * (size[0] + margin) + margin,
                               label_h + len(left.slots) * (size[1] + label_h + margin) + margin), "white")
    draw = ImageDraw.Draw(canvas)
    for col, (title, _, _) in enumerate(columns):
        draw.text((margin + col * (size[0] + margin), 1), title, fill=(0, 0, 0))
    for row, label in enumerate(left.slot_labels):
        y = label_h + row * (size[1] + label_h + margin)
        draw.text((margin, y), label, fill=(0, 0, 0))
        for col, (_, source, kind) in enumerate(columns):
            tile = Image.fromarray(thumb) if source is None else heatmap_overlay(thumb, to_cam_scale(_last(source, kind)[row]))
            canvas.paste(tile, (margin + col * (size[0] + margin), y + label_h))
    return canvas


def save_visualization(result: Visualization, out_dir: str | Path) -> list[Path]:
    """Writes every figure as PNG, ``density.csv`` / ``density.json`` and the raw maps
    (``maps.npz``), atomically; returns the paths written."""
    out = Path(out_dir)
    written = []
    for name, figure in result.figures.items():
        buffer = io.BytesIO()
        figure.save(buffer, format="PNG")
        path = out / f"{name}.png"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    rows = [{"model": "main", **r} for r in result.density]
    rows += [{"model": "compare", **r} for r in result.compare_density or []]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["model", "kind", "layer", "entropy", "frac_above_10pct"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "density.csv", text.getvalue().encode())
    atomic_write_json(out / "density.json", {"slots": result.maps.slots, "rows": rows}, indent=2)
    arrays = {}
    for prefix, maps in (("main", result.maps), ("compare", result.compare)):
        if maps is None:
            continue
        for kind, layers in maps.maps.items():
            for index, layer in enumerate(layers):
                if layer is not None:
                    arrays[f"{prefix}_{kind}_layer{index + 1}"] = layer
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(out / "maps.npz", buffer.getvalue())
    written += [out / "density.csv", out / "density.json", out / "maps.npz"]
    return written


def format_density(result: Visualization) -> str:
    lines = [f"{'model':8} {'kind':10} {'layer':>5} {'entropy':>8} {'>10% max':>9}"]
    for label, rows in (("main", result.density), ("compare", result.compare_density or [])):
        for r in rows:
            lines.append(f"{label:8} {r['kind']:10} {r['layer']:>5} {r['entropy']:>8.3f} {r['frac_above_10pct']:>9.3f}")
    return "\n".join(lines)
