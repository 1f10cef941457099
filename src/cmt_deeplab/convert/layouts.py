"""How a deeplab2 (Keras) array becomes one of our tensors.

Keras keeps channels last; torch keeps them first. Each layout names one rule; the converter
checks that the result has exactly the model tensor's shape, so a rule applied to the wrong
variable is an error, never a silent reshape.

| layout | deeplab2 array | ours |
|---|---|---|
| ``conv`` | Conv2D kernel ``[kh, kw, C_in, C_out]`` | ``[C_out, C_in, kh, kw]`` |
| ``depthwise`` | DepthwiseConv2D kernel ``[kh, kw, C, 1]`` | ``[C, 1, kh, kw]`` |
| ``conv1d`` | Conv1D kernel ``[1, C_in, C_out]`` | Linear ``[C_out, C_in]`` or 1x1 conv ``[C_out, C_in, 1, 1]`` |
| ``dense`` | einsum kernel ``[C_in, C_out]`` (axial ``qkv_kernel``) | ``[C_out, C_in]`` |
| ``flat`` | BN parameters of any rank (multi-axis BNs ``[3, 1, h, 1, 1]``, ``[2, 1, h, 1, dv]``, ``[1, h, 1, dv]``) | row-major flattening: ``(term, head, channel)`` order |
| ``memory`` | ``memory_feature [1, N, C]`` | ``[N, C]`` |
| ``semantic_kernel`` / ``semantic_bias`` | the auxiliary semantic classifier ``[1, 1, C, K']``, ``[K']`` | ``[K, C, 1, 1]``, ``[K]``; ``K' = K + 1`` drops channel 0 (COCO's void) |
| ``copy`` | any | unchanged |
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("conv", "depthwise", "conv1d", "dense", "flat", "memory", "semantic_kernel",
           "semantic_bias", "copy")


def apply_layout(layout: str, array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """``array`` in our layout; the caller checks the result's shape against ``target_shape``.

    ``target_shape`` only picks between equivalent forms (Linear vs 1x1 conv, dropping the
    semantic void channel or not); it never forces a reshape that the layout does not define.
    """
    if layout == "conv" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if layout == "depthwise" and array.ndim == 4:
        return array.transpose(2, 3, 0, 1)
    if layout == "conv1d" and array.ndim == 3 and array.shape[0] == 1:
        matrix = array[0].T
        return matrix.reshape(*matrix.shape, 1, 1) if len(target_shape) == 4 else matrix
    if layout == "dense" and array.ndim == 2:
        return array.T
    if layout == "flat":
        return array.reshape(-1)
    if layout == "memory" and array.ndim == 3 and array.shape[0] == 1:
        return array[0]
    if layout == "semantic_kernel" and array.ndim == 4:
        kernel = array.transpose(3, 2, 0, 1)
        return kernel[1:] if kernel.shape[0] == target_shape[0] + 1 else kernel
    if layout == "semantic_bias" and array.ndim == 1:
        return array[1:] if array.shape[0] == target_shape[0] + 1 else array
    if layout == "copy":
        return array
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    return array  # rank does not fit the rule: the shape check reports it
