"""Bilinear resizing as matrices, so mask logits go to the output size in one cheap step.

A separable bilinear resize is linear along each axis: ``out = A_y @ x @ A_x^T`` with ``A`` a
``[out_len, in_len]`` interpolation matrix. Post-processing chains three such steps (upsample the
stride-4 mask logits to the padded input, crop the padding away, resize to the original image);
multiplying their matrices gives the exact same result as running them one after the other, but
never materialises the ``[N, H_pad, W_pad]`` intermediate, and lets the caller produce the output
a band of rows at a time.
"""

from __future__ import annotations

import torch


def bilinear_resize_matrix(
    in_len: int, out_len: int, align_corners: bool = True, device: torch.device | None = None
) -> torch.Tensor:
    """Interpolation matrix ``[out_len, in_len]`` of ``F.interpolate(mode="bilinear")`` along one axis.

    Matches PyTorch (and TF1 ``resize_bilinear``) for both corner conventions, including the
    clamping of source coordinates at the borders.
    """
    _check_lengths(in_len, out_len)
    out_index = torch.arange(out_len, dtype=torch.float64, device=device)
    if align_corners:
        scale = (in_len - 1) / (out_len - 1) if out_len > 1 else 0.0
        source = out_index * scale
    else:
        source = ((out_index + 0.5) * (in_len / out_len) - 0.5).clamp(min=0.0)
    return _interpolation_matrix(source, in_len)


def stride_grid_matrix(
    in_len: int, out_len: int, stride: int = 4, device: torch.device | None = None
) -> torch.Tensor:
    """``[out_len, in_len]`` upsampling from a corner-aligned stride grid to pixels.

    Sample ``j`` of a stride-``s`` map sits on pixel ``s j`` (strided 'same' convolutions, and
    ground truth sliced ``t[..., ::s, ::s]``), so pixel ``i`` reads ``i / s``, held at the last
    sample beyond it. For ``out_len = s (in_len - 1) + 1`` (e.g. 32k+1 crops) this is
    ``align_corners=True``; for other lengths (a 96-pixel input, 24 samples) that would stretch
    the grid by up to ``s - 1`` pixels at the far edge.
    """
    _check_lengths(in_len, out_len)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    out_index = torch.arange(out_len, dtype=torch.float64, device=device)
    return _interpolation_matrix((out_index / stride).clamp(max=in_len - 1), in_len)


def _check_lengths(in_len: int, out_len: int) -> None:
    if in_len < 1 or out_len < 1:
        raise ValueError(f"resize lengths must be positive, got {in_len} -> {out_len}")


def _interpolation_matrix(source: torch.Tensor, in_len: int) -> torch.Tensor:
    """Linear interpolation at fractional ``source`` positions of ``in_len`` samples."""
    low = source.floor().long().clamp(max=in_len - 1)
    high = (low + 1).clamp(max=in_len - 1)
    frac = source - low.to(torch.float64)
    matrix = torch.zeros(source.shape[0], in_len, dtype=torch.float64, device=source.device)
    rows = torch.arange(source.shape[0], device=source.device)
    # index_put_ with accumulate: low == high at the last row, where the weights must add up.
    matrix.index_put_((rows, low), 1.0 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix


def logits_to_output_matrix(
    mask_len: int, input_len: int, valid_len: int, out_len: int, device: torch.device | None = None
) -> torch.Tensor:
    """``[out_len, mask_len]`` matrix: upsample to the padded input, crop the valid part, resize.

    Args:
        mask_len: length of the mask-logit axis (``ceil(input_len / stride)``, stride 4).
        input_len: length of the padded model input along this axis.
        valid_len: the unpadded part of the input (the resized image), ``<= input_len``.
        out_len: length of the original image along this axis.

    The upsampling follows the corner-aligned stride-4 grid of the mask logits (ground truth
    is ``t[..., ::4, ::4]``; ``align_corners=True`` for 32k+1 inputs). The last step inverts
    the image resize of ``cmt_deeplab.data.transforms`` (and of the Predictor), which uses
    half-pixel centres (``align_corners=False``), so it uses them too.
    """
    if not 1 <= valid_len <= input_len:
        raise ValueError(f"valid size {valid_len} must lie in [1, input size {input_len}]")
    # The grid's stride s, from mask_len = ceil(input_len / s): 4 for the models' mask logits.
    stride = -(-input_len // mask_len)
    upsample = stride_grid_matrix(mask_len, input_len, stride, device)[:valid_len]
    resize = bilinear_resize_matrix(valid_len, out_len, False, device)
    return resize @ upsample

