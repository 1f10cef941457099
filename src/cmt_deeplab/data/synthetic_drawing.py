"""The pixels of the synthetic scenes (``data.synthetic``): stuff textures, thing shapes and
their colours, each drawn from the caller's random generator."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    first = rng.uniform(0, 255, 3)
    for _ in range(20):
        second = rng.uniform(0, 255, 3)
        if np.linalg.norm(first - second) > 90:
            break
    return first, second


def texture(
    name: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int
) -> np.ndarray:
    """``[S, S, 3]`` float texture of stuff class ``name`` with random colours and geometry."""
    first, second = _colour_pair(rng)
    unit = size / 96.0
    angle = rng.uniform(0, math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    across = -xx * math.sin(angle) + yy * math.cos(angle)
    if name == "stripes":
        period = rng.uniform(5.0, 12.0) * unit
        weight = np.clip(0.5 + 1.5 * np.sin(2 * math.pi * along / period), 0, 1)
    elif name == "checker":
        cell = rng.uniform(4.0, 10.0) * unit
        weight = (np.floor(along / cell) + np.floor(across / cell)) % 2
    elif name == "noise":
        cells = int(rng.integers(4, 10))
        coarse = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC)) / 255.0
        weight = np.clip(smooth + rng.normal(0, 0.2, (size, size)), 0, 1)
    elif name == "gradient":
        weight = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif name == "dots":
        cell = rng.uniform(6.0, 11.0) * unit
        dy, dx = (across / cell) % 1 - 0.5, (along / cell) % 1 - 0.5
        weight = (dy * dy + dx * dx < rng.uniform(0.06, 0.12)).astype(np.float32)
    elif name == "waves":
        period = rng.uniform(8.0, 14.0) * unit
        bend = rng.uniform(3.0, 6.0) * unit * np.sin(2 * math.pi * across / (3 * period))
        weight = 0.5 + 0.5 * np.sin(2 * math.pi * (along + bend) / period)
    else:
        raise ValueError(f"unknown stuff texture {name!r}")
    weight = weight.astype(np.float32)[..., None]
    return first * (1 - weight) + second * weight


def shape_mask(
    name: str, centre: np.ndarray, radius: float, angle: float, size: int
) -> np.ndarray:
    """``[S, S]`` bool mask of a thing of class ``name`` (``centre`` is ``(y, x)``)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cy, cx = float(centre[0]), float(centre[1])
    if name in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        if name == "ring":
            inner = radius * 0.5
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        if name == "square":
            radii, count = [radius], 4
        elif name == "triangle":
            radii, count = [radius * 1.15], 3  # a bit larger: a triangle covers less area
        elif name == "star":
            radii, count = [radius * 1.2, radius * 0.5], 10
        elif name == "hexagon":
            radii, count = [radius], 6
        elif name == "cross":
            # Twelve corners: radii alternating arm tip / inner corner, rotated by the angle.
            radii, count = [radius * 1.15, radius * 1.15, radius * 0.5], 12
        else:
            raise ValueError(f"unknown thing shape {name!r}")
        points = [
            (cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / count),
             cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / count))
            for k in range(count)
        ]
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def distinct_colour(rng: np.random.Generator, others: list[np.ndarray]) -> np.ndarray:
    """A random colour at least 70 away (RGB distance) from ``others`` if one is found."""
    colour = rng.uniform(0, 255, 3)
    for _ in range(20):
        if all(np.linalg.norm(colour - other) > 70 for other in others):
            break
        colour = rng.uniform(0, 255, 3)
    return colour


def shaded(
    colour: np.ndarray, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int
) -> np.ndarray:
    """``[S, S, 3]`` colour with a soft linear shading (+-25), so a shape is not one flat value."""
    angle = rng.uniform(0, 2 * math.pi)
    ramp = ((xx * math.cos(angle) + yy * math.sin(angle)) / size - 0.5)[..., None]
    return np.clip(colour + 50.0 * ramp, 0, 255)
