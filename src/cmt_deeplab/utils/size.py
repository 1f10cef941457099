"""The one reader of image sizes: ``S``, ``"S"``, ``"HxW"`` or ``(H, W)`` -> ``(H, W)``.

Command-line flags (``--size``, ``--crop``), config keys (``input.crop``) and the size
arguments of transforms, the Predictor and post-processing all go through it, so every
spelling is accepted everywhere and every error names the setting and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

Size = int | str | Sequence[int]

#: The largest side accepted: far above any training or evaluation canvas (COCO 1025,
#: Cityscapes 2049), far below a size whose canvas alone would exhaust memory.
MAX_SIDE = 16384


def parse_size(
    value: Size, name: str = "size", minimum: int = 2, maximum: int = MAX_SIDE
) -> tuple[int, int]:
    """``(height, width)`` of a size given as ``S`` (square), ``"S"``, ``"HxW"`` or ``(H, W)``.

    Args:
        value: the size as the user or caller gave it.
        name: how the setting is spelled (``"--crop"``, ``"input.crop"``), for the error.
        minimum: the smallest side accepted.
        maximum: the largest side accepted.

    Raises:
        ValueError: not one of those forms, or a side outside ``[minimum, maximum]``; the
            message names ``name`` and ``value``.
    """
    sides = _sides(value)
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or min(sides) < minimum or max(sides) > maximum:
        raise ValueError(f"{name}: bad size {value!r}; expected S or HxW (height x width) "
                         f"with sizes from {minimum} to {maximum}")
    return sides[0], sides[1]


def _sides(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, Integral):
        return [int(value)]
    if isinstance(value, str):
        try:
            return [int(part) for part in value.lower().split("x")]
        except ValueError:
            return []
    if isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, Integral) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    return []
