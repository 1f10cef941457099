"""A jet-like colour map and heat-map blending with numpy and Pillow (the figures around
them are drawn with matplotlib: ``maps.render_grid``)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def jet(values: np.ndarray) -> np.ndarray:
    """``uint8 [...]`` in [0, 255] -> ``uint8 [..., 3]`` (blue = low, red = high), as CAM uses."""
    x = values.astype(np.float32) / 255.0
    red = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return (np.stack([red, green, blue], axis=-1) * 255.0 + 0.5).astype(np.uint8)


def to_cam_scale(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation of one map to ``uint8`` [0, 255], with no smoothing (no sqrt)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high - low <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) / (high - low) * 255.0).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blends a ``uint8 [h, w]`` CAM-scaled map (resized bilinearly) over ``[H, W, 3]`` RGB."""
    height, width = image.shape[:2]
    resized = Image.fromarray(cam).resize((width, height), Image.BILINEAR)
    colours = jet(np.asarray(resized))
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
