"""Panoptic overlays: the image blended with one colour per segment, contours and class names.

Drawing is Pillow only (plus numpy/scipy for the masks). Stuff segments take their category's
colour; thing instances of one category get distinct shades of it, so neighbours stay apart.
Categories without a colour get a fixed one derived from their id.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cmt_deeplab.data.metadata import DatasetInfo

#: Segments smaller than this fraction of the image get no name (the text would hide them).
_MIN_LABELLED_FRACTION = 0.002


def draw_overlay(
    image: np.ndarray | Image.Image,
    panoptic: np.ndarray,
    segments_info: Sequence[dict[str, Any]],
    info: DatasetInfo | None = None,
    alpha: float = 0.5,
    contours: bool = True,
    labels: bool = True,
) -> Image.Image:
    """Blends segment colours over ``image`` and returns an RGB PIL image.

    Args:
        image: ``[H, W, 3]`` uint8 RGB array or PIL image, the size of ``panoptic``.
        panoptic: ``[H, W]`` segment ids (0 = void, left as is).
        segments_info: records with ``id``, ``category_id`` and ``isthing`` (``area`` optional).
        info: categories, for names and colours; without it, names are the category ids.
        alpha: weight of the segment colour in the blend.
        contours: draw a white line along segment boundaries.
        labels: write each large enough segment's class name at its most interior pixel.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    panoptic = np.asarray(panoptic)
    if pixels.shape[:2] != panoptic.shape:
        raise ValueError(f"image {pixels.shape[:2]} and panoptic map {panoptic.shape} differ in size")
    colours = segment_colours(segments_info, info)

    # Colour lookup per pixel: unique ids -> index into a colour table (row 0 = no colour).
    ids, inverse = np.unique(panoptic, return_inverse=True)
    table = np.zeros((len(ids), 3), dtype=np.float64)
    coloured = np.zeros(len(ids), dtype=bool)
    for row, segment_id in enumerate(ids.tolist()):
        if segment_id in colours:
            table[row] = colours[segment_id]
            coloured[row] = True
    inverse = inverse.reshape(panoptic.shape)
    weight = np.where(coloured[inverse], alpha, 0.0)[..., None]
    blended = pixels.astype(np.float64) * (1.0 - weight) + table[inverse] * weight
    if contours:
        blended[_boundaries(panoptic)] = 255.0
    result = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    if labels:
        _draw_labels(result, panoptic, segments_info, info)
    return result


def segment_colours(
    segments_info: Sequence[dict[str, Any]], info: DatasetInfo | None = None
) -> dict[int, tuple[int, int, int]]:
    """``{segment id: (r, g, b)}``: category colour for stuff, shades of it for instances."""
    colours = {}
    for segment in segments_info:
        base = _category_colour(int(segment["category_id"]), info)
        if segment.get("isthing", False):
            base = _shade(base, int(segment["id"]))
        colours[int(segment["id"])] = base
    return colours


def _category_colour(category_id: int, info: DatasetInfo | None) -> tuple[int, int, int]:
    if info is not None:
        try:
            colour = info.categories[info.contiguous_id(category_id)].color
        except KeyError:
            colour = (0, 0, 0)
        if any(colour):
            return tuple(int(c) for c in colour)
    # Golden-ratio hues: consecutive ids get well separated colours.
    hue = (category_id * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


def _shade(colour: tuple[int, int, int], segment_id: int) -> tuple[int, int, int]:
    """A deterministic lighter or darker variant of ``colour`` per instance."""
    rng = np.random.default_rng(segment_id)
    factor = rng.uniform(0.6, 1.4)
    return tuple(int(np.clip(c * factor + rng.integers(-20, 21), 0, 255)) for c in colour)


def _boundaries(panoptic: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels whose right or lower neighbour is another labelled segment."""
    edges = np.zeros(panoptic.shape, dtype=bool)
    vertical = panoptic[:-1] != panoptic[1:]
    horizontal = panoptic[:, :-1] != panoptic[:, 1:]
    edges[:-1] |= vertical & (panoptic[:-1] > 0)
    edges[1:] |= vertical & (panoptic[1:] > 0)
    edges[:, :-1] |= horizontal & (panoptic[:, :-1] > 0)
    edges[:, 1:] |= horizontal & (panoptic[:, 1:] > 0)
    return edges


def _draw_labels(
    canvas: Image.Image,
    panoptic: np.ndarray,
    segments_info: Sequence[dict[str, Any]],
    info: DatasetInfo | None,
) -> None:
    height, width = panoptic.shape
    font = _font(max(10, min(height, width) // 30))
    draw = ImageDraw.Draw(canvas)
    min_area = _MIN_LABELLED_FRACTION * height * width
    for segment in segments_info:
        mask = panoptic == segment["id"]
        if mask.sum() < max(min_area, 1):
            continue
        y, x = _interior_point(mask)
        text = _name(int(segment["category_id"]), info)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        # Centre the text on the point, kept inside the image.
        x0 = int(np.clip(x - text_w / 2, 0, max(0, width - text_w - 2)))
        y0 = int(np.clip(y - text_h / 2, 0, max(0, height - text_h - 2)))
        draw.rectangle((x0, y0, x0 + text_w + 2, y0 + text_h + 2), fill=(0, 0, 0))
        draw.text((x0 + 1 - left, y0 + 1 - top), text, fill=(255, 255, 255), font=font)


def _interior_point(mask: np.ndarray) -> tuple[int, int]:
    """A pixel of ``mask`` farthest from its border (inside even for ring-shaped segments);
    of the tied ones, the nearest to the centroid, so that text sits centred in rectangles."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    distance = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    ties = np.argwhere(distance >= distance.max() - 1e-6)  # [T, 2] (y, x)
    centroid = np.argwhere(crop).mean(axis=0)
    y, x = ties[np.argmin(((ties - centroid) ** 2).sum(axis=1))]
    return int(y + rows[0]), int(x + cols[0])


def _name(category_id: int, info: DatasetInfo | None) -> str:
    if info is None:
        return str(category_id)
    try:
        return info.categories[info.contiguous_id(category_id)].name
    except KeyError:
        return str(category_id)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()
