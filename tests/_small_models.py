"""Every registered model at small widths and depths: the same code path, cheap to run."""

from __future__ import annotations

import cmt_deeplab
from cmt_deeplab.models.cmt_deeplab import TINY_DEFAULTS

#: Class and slot counts of the small builds.
SMALL = {"num_classes": 7, "num_thing_classes": 3, "num_slots": 16}

#: MaX-DeepLab-S / -L at small widths (the tiny MaX variant has its own registered numbers).
_SMALL_MAX = {"width_multiplier": 0.25, "stem_width_multiplier": 0.25, "num_heads": 4,
              "memory_channels": 64, "base_transformer_expansion": 0.25,
              "global_ffn_channels": 64, "transformer_ffn_channels": 64,
              "pixel_feature_dim": 16, "semantic_channels": 32}


def small_model(name: str, **overrides):
    """``name`` with its own backbone type and decoder path, at small width and depth."""
    if name.startswith("cmt-deeplab") and name != "cmt-deeplab-tiny":
        kwargs = dict(TINY_DEFAULTS)
        if name == "cmt-deeplab-r50":
            kwargs["backbone_num_blocks"] = (1, 1, 1, 1)
        return cmt_deeplab.build_model(name, **SMALL, **kwargs, **overrides)
    if name.startswith("max-deeplab") and name != "max-deeplab-tiny":
        small = dict(_SMALL_MAX)
        small["num_blocks"] = (1, 1, 2, 1) if name == "max-deeplab-s" else (1, 2, 1, 1)
        return cmt_deeplab.build_model(name, **SMALL, **small, **overrides)
    return cmt_deeplab.build_model(name, **SMALL, **overrides)
