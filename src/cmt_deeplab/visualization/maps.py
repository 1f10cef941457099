"""Looking inside the clusters (CMT-DeepLab supplementary §3).

For chosen cluster centres (by default those of the final predicted segments) we collect,
at every transformer layer, the clustering result (CMT's soft assignment) and the
cross-attention over pixels averaged across heads (as DETR does), both ``[h, w]`` per centre.
Maps are shown as CAM-style heat maps: min-max normalised to [0, 255] per map, no smoothing.

"Denser" is measured as well as shown: per map the entropy of the map taken as a distribution
over pixels (higher = spread over more pixels) and the fraction of pixels above 10% of the
map's maximum.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from cmt_deeplab.visualization.colormap import heatmap_overlay, jet, to_cam_scale

MAP_KINDS = ("clustering", "attention")


@dataclass
class ClusterMaps:
    """Per-layer maps of selected slots, cropped to the image (padding removed).

    ``maps[kind]`` is a list over layers of ``float32 [S, h_l, w_l]`` arrays (``None`` for a
    layer that has no map of that kind, e.g. clustering in MaX layers); ``image`` is the
    resized input ``[H, W, 3]`` uint8 the maps belong to.
    """

    image: np.ndarray
    slots: list[int]
    slot_labels: list[str]
    maps: dict[str, list[np.ndarray | None]] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return max((len(v) for v in self.maps.values()), default=0)


def map_density(values: np.ndarray) -> dict[str, float]:
    """Entropy (nats) of the map normalised to sum 1, and the fraction of pixels > 10% of max."""
    values = np.clip(values.astype(np.float64), 0.0, None)
    total = values.sum()
    if total <= 0:
        return {"entropy": 0.0, "frac_above_10pct": 0.0}
    p = values.ravel() / total
    nonzero = p[p > 0]
    return {
        "entropy": float(-(nonzero * np.log(nonzero)).sum()),
        "frac_above_10pct": float((values > 0.1 * values.max()).mean()),
    }


def select_slots(
    outputs: dict, max_slots: int = 6, class_threshold: float = 0.7
) -> list[int]:
    """Slots of the final predicted segments, largest first: slots whose class confidence
    passes the threshold, ranked by the pixels they win in the final mask argmax. If none
    passes (an untrained model), the slots winning most pixels."""
    probs = outputs["pred_logits"][0].softmax(-1)[:, :-1]
    confidence = probs.max(-1).values
    masks = outputs["pred_masks"][0]
    kept = confidence >= class_threshold
    if kept.any():
        masks = masks.masked_fill(~kept[:, None, None], float("-inf"))
    winners = masks.argmax(0).flatten()
    area = torch.bincount(winners, minlength=masks.shape[0])
    order = torch.argsort(area, descending=True)
    return [int(s) for s in order[:max_slots] if area[s] > 0]


@torch.no_grad()
def collect_cluster_maps(
    model: torch.nn.Module,
    padded: torch.Tensor,
    valid_size: tuple[int, int],
    image: np.ndarray,
    slots: list[int] | None = None,
    max_slots: int = 6,
    class_names: list[str] | None = None,
) -> ClusterMaps:
    """Runs ``model`` on one padded input ``[3, H, W]`` and gathers the maps of ``slots``."""
    model.eval()
    outputs = model(padded[None], return_maps=True)
    if slots is None:
        slots = select_slots(outputs, max_slots)
    num_slots = outputs["pred_logits"].shape[1]
    bad = [s for s in slots if not 0 <= s < num_slots]
    if bad:
        raise ValueError(f"slot index out of range [0, {num_slots}): {bad}")
    labels = []
    probs = outputs["pred_logits"][0].softmax(-1)
    for slot in slots:
        cls = int(probs[slot, :-1].argmax())
        name = class_names[cls] if class_names and cls < len(class_names) else f"class {cls}"
        labels.append(f"slot {slot}: {name} ({float(probs[slot, cls]):.2f})")
    canvas = padded.shape[-2:]
    result = ClusterMaps(image=image, slots=list(slots), slot_labels=labels)
    for kind in MAP_KINDS:
        layers = []
        for layer_maps in outputs["maps"]:
            if kind not in layer_maps:
                layers.append(None)
                continue
            maps = layer_maps[kind][0, slots].float()  # [S, h, w]
            h, w = maps.shape[-2:]
            # Keep the part of the map that covers the image, not the padding.
            vh = max(1, round(h * valid_size[0] / canvas[0]))
            vw = max(1, round(w * valid_size[1] / canvas[1]))
            layers.append(maps[:, :vh, :vw].cpu().numpy())
        if any(m is not None for m in layers):
            result.maps[kind] = layers
    return result


def density_table(maps: ClusterMaps) -> list[dict]:
    """One row per (kind, layer): mean entropy and mean fraction above 10% over the slots."""
    rows = []
    for kind, layers in maps.maps.items():
        for index, layer in enumerate(layers):
            if layer is None:
                continue
            stats = [map_density(m) for m in layer]
            rows.append({
                "kind": kind, "layer": index + 1,
                "entropy": float(np.mean([s["entropy"] for s in stats])) if stats else 0.0,
                "frac_above_10pct": float(np.mean([s["frac_above_10pct"] for s in stats])) if stats else 0.0,
            })
    return rows


def render_grid(
    maps: ClusterMaps, kind: str, cell: int = 160, title: str | None = None
) -> Image.Image:
    """One row per slot, one column per layer (the paper's Figs. 2-5), image in column 0,
    drawn with matplotlib: each row named by its slot and class at a readable size, and a
    colour bar for the heat-map scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    layers = [(i, m) for i, m in enumerate(maps.maps.get(kind, [])) if m is not None]
    if not layers:
        raise ValueError(f"no {kind!r} maps to render")
    image = maps.image
    scale = cell / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    thumb = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    rows, cols = len(maps.slots), len(layers) + 1
    dpi = 100
    # At least 2.6 in tall: the colour bar's label fits beside a single row.
    figure = Figure(figsize=(cols * (size[0] + 12) / dpi + 1.2,
                             max(2.6, rows * (size[1] + 30) / dpi + (0.5 if title else 0.25))),
                    dpi=dpi, layout="constrained")
    grid = figure.subplots(rows, cols, squeeze=False)
    for row, label in enumerate(maps.slot_labels):
        grid[row, 0].imshow(thumb)
        grid[row, 0].set_title(label, loc="left", fontsize=10)
        for col, (index, layer) in enumerate(layers, start=1):
            grid[row, col].imshow(heatmap_overlay(thumb, to_cam_scale(layer[row])))
            if row == 0:
                grid[row, col].set_title(f"layer {index + 1}", fontsize=10)
    for axes in grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
    colours = ListedColormap(jet(np.arange(256, dtype=np.uint8)) / 255.0)
    bar = figure.colorbar(ScalarMappable(Normalize(0.0, 1.0), colours), ax=grid[:, 1:],
                          shrink=min(1.0, 3.0 / rows) if rows > 3 else 0.9, aspect=25)
    bar.set_label("map value, min-max scaled", fontsize=9)
    if title:
        figure.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as rendered:
        return rendered.convert("RGB")
