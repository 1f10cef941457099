"""Training and evaluation transforms on samples (see ``data.sample``), as MaX-DeepLab's configs.

Training (``TrainTransform``), in deeplab2's order:

1. resize so the image fits the crop (the longer side of a square crop becomes the crop size:
   MaX's ``min_resize_value = max_resize_value = crop``); ``resize_to_crop=False`` keeps the
   original resolution (Cityscapes);
2. random scale from ``min_scale..max_scale`` in steps of ``scale_step`` (0.5-1.5 step 0.1), so
   the scale is relative to the image resized in 1;
3. pad at the bottom/right up to the crop size, then a random crop of the crop size; padding
   is void (``void`` True, ``semantic`` -1, ``panoptic`` 0, no mask) and the image is padded
   with 0, which is mean grey after normalisation;
4. horizontal flip with probability 0.5 (padding flips with the image).

Evaluation (``EvalTransform``): optional resize of the longer side, then pad at the bottom/right
to a fixed size; it adds ``valid_size`` (the un-padded ``(h, w)``) and ``scale`` to the sample.

Images are resized bilinearly (half-pixel centres, no antialiasing, like ``tf.image.resize``);
labels by nearest neighbour on the same half-pixel grid, through one shared row/column index
per call, so ``masks``, ``void``, ``semantic`` and ``panoptic`` stay consistent pixel for pixel.
Masks that are empty after the crop are dropped (with their ``labels`` / ``is_thing``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cmt_deeplab.data.metadata import IGNORE_LABEL
from cmt_deeplab.utils.size import parse_size

#: Value of each label map where the crop extends past the image.
_PAD_VALUES = {"masks": False, "void": True, "semantic": IGNORE_LABEL, "panoptic": 0}

Rng = np.random.Generator | torch.Generator | None


def _numpy_rng(rng: Rng, fallback: np.random.Generator) -> np.random.Generator:
    if rng is None:
        return fallback
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=rng))
        return np.random.default_rng(seed)
    return rng


def _source_index(count: int, scaled: int, original: int, start: int) -> torch.Tensor:
    """Nearest source rows of output rows ``start..start+count`` of an ``original -> scaled``
    resize (half-pixel centres): ``floor((i + 0.5) * original / scaled)``."""
    positions = torch.arange(start, start + count, dtype=torch.float64)
    index = torch.floor((positions + 0.5) * (original / scaled)).long()
    return index.clamp_(0, original - 1)


def resize_crop_pad(
    sample: dict[str, Any],
    scaled_size: tuple[int, int],
    output_size: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    flip: bool = False,
) -> dict[str, Any]:
    """Resizes ``sample`` to ``scaled_size``, takes the ``output_size`` window at ``offset``
    (padding where it passes the image's bottom/right) and optionally flips it horizontally.

    Shapes: image ``[3, H, W] -> [3, oh, ow]``; masks ``[M, H, W] -> [M', oh, ow]`` (empty
    masks dropped); void/semantic/panoptic ``[H, W] -> [oh, ow]``. Other keys are copied.
    """
    image = sample["image"]
    height, width = image.shape[-2:]
    scaled_h, scaled_w = scaled_size
    out_h, out_w = output_size
    top, left = offset
    assert 0 <= top < max(scaled_h, 1) and 0 <= left < max(scaled_w, 1), (offset, scaled_size)
    valid_h, valid_w = min(out_h, scaled_h - top), min(out_w, scaled_w - left)

    out = dict(sample)
    # Image: bilinear resize of the whole image (3 channels, cheap), then window + pad.
    if (scaled_h, scaled_w) != (height, width):
        image = F.interpolate(image[None], size=(scaled_h, scaled_w), mode="bilinear",
                              align_corners=False)[0]
    canvas = image.new_zeros((image.shape[0], out_h, out_w))
    canvas[:, :valid_h, :valid_w] = image[:, top:top + valid_h, left:left + valid_w]
    out["image"] = canvas

    # Labels: gather the nearest source pixel of each output pixel inside the image only.
    rows = _source_index(valid_h, scaled_h, height, top)
    cols = _source_index(valid_w, scaled_w, width, left)
    for key, pad_value in _PAD_VALUES.items():
        if key not in sample:
            continue
        label = sample[key]
        window = label.index_select(-2, rows).index_select(-1, cols)
        padded = label.new_full((*label.shape[:-2], out_h, out_w), pad_value)
        padded[..., :valid_h, :valid_w] = window
        out[key] = padded

    if flip:
        for key in ("image", *_PAD_VALUES):
            if key in out:
                out[key] = out[key].flip(-1)

    if "masks" in out:
        keep = out["masks"].flatten(1).any(dim=1)
        if not bool(keep.all()):
            for key in ("masks", "labels", "is_thing"):
                if key in out:
                    out[key] = out[key][keep]
    return out


class TrainTransform:
    """Random scale, crop/pad to ``crop_size`` and horizontal flip (see the module notes).

    Args:
        crop_size: ``S`` or ``(H, W)`` of the output.
        min_scale, max_scale, scale_step: scale choices ``min, min + step, ..., max``; a step of
            0 draws the scale uniformly from ``[min, max]``.
        resize_to_crop: first fit the image inside the crop (MaX on COCO); ``False`` keeps the
            original resolution as the scale reference (Cityscapes).
        flip_prob: probability of a horizontal flip.
        seed: seeds the generator used when ``__call__`` gets no ``rng``.

    ``transform(sample, rng)`` takes a ``numpy.random.Generator`` or ``torch.Generator``.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        min_scale: float = 0.5,
        max_scale: float = 1.5,
        scale_step: float = 0.1,
        resize_to_crop: bool = True,
        flip_prob: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if scale_step < 0:
            raise ValueError(f"scale_step must be >= 0, got {scale_step}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
        self.crop_size = parse_size(crop_size, "crop_size", minimum=1)
        self.min_scale, self.max_scale, self.scale_step = min_scale, max_scale, scale_step
        self.resize_to_crop = resize_to_crop
        self.flip_prob = flip_prob
        self._rng = np.random.default_rng(seed)

    @property
    def scales(self) -> np.ndarray | None:
        """The discrete scale choices, or ``None`` for a continuous range."""
        if self.scale_step == 0 or self.min_scale == self.max_scale:
            return None if self.scale_step == 0 else np.array([self.min_scale])
        count = int(math.floor((self.max_scale - self.min_scale) / self.scale_step + 1e-6)) + 1
        return self.min_scale + self.scale_step * np.arange(count)

    def __call__(self, sample: dict[str, Any], rng: Rng = None) -> dict[str, Any]:
        rng = _numpy_rng(rng, self._rng)
        height, width = sample["image"].shape[-2:]
        crop_h, crop_w = self.crop_size
        base = min(crop_h / height, crop_w / width) if self.resize_to_crop else 1.0
        choices = self.scales
        scale = float(rng.choice(choices)) if choices is not None else float(
            rng.uniform(self.min_scale, self.max_scale))
        scaled_h = max(1, round(height * base * scale))
        scaled_w = max(1, round(width * base * scale))
        top = int(rng.integers(0, max(scaled_h - crop_h, 0) + 1))
        left = int(rng.integers(0, max(scaled_w - crop_w, 0) + 1))
        flip = bool(rng.random() < self.flip_prob)
        return resize_crop_pad(sample, (scaled_h, scaled_w), self.crop_size, (top, left), flip)

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale={self.min_scale}-"
                f"{self.max_scale} step {self.scale_step}, resize_to_crop={self.resize_to_crop}, "
                f"flip_prob={self.flip_prob})")


class EvalTransform:
    """Resize the longer side to ``resize_longer`` (optional), then pad to ``pad_to`` (optional).

    Adds ``valid_size`` (``(h, w)`` of the image inside the padded output, top-left) and
    ``scale`` (resized / original) to the sample, to undo both on predictions.
    """

    def __init__(
        self,
        resize_longer: int | None = None,
        pad_to: int | tuple[int, int] | None = None,
    ) -> None:
        if resize_longer is not None and resize_longer <= 0:
            raise ValueError(f"resize_longer must be positive, got {resize_longer}")
        self.resize_longer = resize_longer
        self.pad_to = None if pad_to is None else parse_size(pad_to, "pad_to", minimum=1)

    def __call__(self, sample: dict[str, Any], rng: Rng = None) -> dict[str, Any]:
        height, width = sample["image"].shape[-2:]
        scale = 1.0
        scaled = (height, width)
        if self.resize_longer is not None:
            scale = self.resize_longer / max(height, width)
            scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
        output = self.pad_to or scaled
        if scaled[0] > output[0] or scaled[1] > output[1]:
            raise ValueError(
                f"{sample.get('file_name', 'image')}: resized size {scaled[0]}x{scaled[1]} "
                f"exceeds pad_to {output[0]}x{output[1]}; set resize_longer <= pad_to"
            )
        out = resize_crop_pad(sample, scaled, output)
        out["valid_size"] = scaled
        out["scale"] = scale
        return out

    def __repr__(self) -> str:
        return f"EvalTransform(resize_longer={self.resize_longer}, pad_to={self.pad_to})"
