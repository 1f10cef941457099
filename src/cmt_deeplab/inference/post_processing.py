"""Panoptic post-processing of mask-transformer outputs: pixel-wise (MaX) and mask-wise (kMaX).

Both turn the predictions of one image (``N`` slots, each a class distribution and a mask
logit map at stride 4) into a panoptic map at the original image size. They follow deeplab2's
``model/post_processor/max_deeplab.py`` (fact sheet §8):

- pixel-wise: keep slots whose class confidence reaches ``class_threshold``; each pixel takes the
  kept slot with the largest mask logit, and stays only if the softmax over the kept slots
  exceeds ``pixel_threshold`` and no dropped slot would have won the pixel;
- mask-wise: threshold every slot's mask probability into a binary mask, rank the slots by
  class confidence times mean mask probability, and paste the masks best first onto the free
  pixels, dropping a mask that would lose too much of itself to earlier ones.

Then both drop thing segments and stuff classes smaller than the area limits and encode
``category_id * label_divisor + instance``, with instance = slot + 1 for things and 0 for stuff,
so that all slots predicting one stuff class merge into a single segment.

Everything is vectorised torch on the device of the inputs. The mask logits reach the output
size through one precomputed matrix per axis (the three resizes composed; see ``resize.py``),
a band of rows at a time, so memory stays bounded for large photographs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cmt_deeplab.data.metadata import IGNORE_LABEL, DatasetInfo
from cmt_deeplab.inference.resize import logits_to_output_matrix
from cmt_deeplab.inference.result import PanopticResult, segments_from_panoptic
from cmt_deeplab.utils.size import parse_size

#: deeplab2's area limits (thing, stuff) at a 641x641 crop; 256/4096 at 1025 is the same density.
REFERENCE_AREA_LIMITS = (100.0, 1600.0)
REFERENCE_INPUT_PIXELS = 641 * 641
#: Elements of one ``[N, rows, W0]`` band of upsampled mask logits (64 MiB in float32).
_BAND_ELEMENTS = 1 << 24


def default_area_limits(
    input_size: tuple[int, int], valid_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[float, float]:
    """deeplab2's (thing, stuff) area limits for this input, in pixels of the output map.

    The limits scale with the pixel count of the model input (100/1600 at 641x641), and are
    measured on the resized image; one input pixel of the image covers
    ``(H0 * W0) / (Hv * Wv)`` output pixels.
    """
    input_scale = input_size[0] * input_size[1] / REFERENCE_INPUT_PIXELS
    to_output = out_size[0] * out_size[1] / (valid_size[0] * valid_size[1])
    thing, stuff = REFERENCE_AREA_LIMITS
    return thing * input_scale * to_output, stuff * input_scale * to_output


@dataclass
class _Geometry:
    """Where the mask logits of one image go: sizes and the two interpolation matrices."""

    out_size: tuple[int, int]
    rows_matrix: torch.Tensor  # [H0, h]
    cols_matrix: torch.Tensor  # [W0, w]
    thing_area_limit: float
    stuff_area_limit: float

    @classmethod
    def create(
        cls,
        pred_masks: torch.Tensor,
        out_size: tuple[int, int],
        input_size: tuple[int, int] | None,
        valid_size: tuple[int, int] | None,
        thing_area_limit: float | None,
        stuff_area_limit: float | None,
    ) -> _Geometry:
        mask_h, mask_w = pred_masks.shape[-2:]
        # Crops are 32k+1 (641, 1025, ...), for which h = ceil(H / 4) means H = 4 (h - 1) + 1.
        input_size = parse_size(input_size or (4 * (mask_h - 1) + 1, 4 * (mask_w - 1) + 1),
                                "input_size", minimum=1)
        valid_size = parse_size(valid_size or input_size, "valid_size", minimum=1)
        out_size = parse_size(out_size, "out_size", minimum=1)
        if valid_size[0] > input_size[0] or valid_size[1] > input_size[1]:
            raise ValueError(f"valid size {valid_size} exceeds the input size {input_size}")
        default_thing, default_stuff = default_area_limits(input_size, valid_size, out_size)
        device = pred_masks.device
        rows = logits_to_output_matrix(mask_h, input_size[0], valid_size[0], out_size[0], device)
        cols = logits_to_output_matrix(mask_w, input_size[1], valid_size[1], out_size[1], device)
        return cls(
            out_size=out_size,
            rows_matrix=rows.float(),
            cols_matrix=cols.float(),
            thing_area_limit=default_thing if thing_area_limit is None else thing_area_limit,
            stuff_area_limit=default_stuff if stuff_area_limit is None else stuff_area_limit,
        )

    def bands(self, pred_masks: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yields ``(rows, logits [N, r, W0])``: the mask logits at the output size, by bands."""
        num_slots = pred_masks.shape[0]
        height, width = self.out_size
        band = max(1, _BAND_ELEMENTS // max(1, num_slots * width))
        masks = pred_masks.float()
        for start in range(0, height, band):
            rows = slice(start, min(start + band, height))
            # [r, h] @ [N, h, w] -> [N, r, w]; then @ [w, W0] -> [N, r, W0]. Dense GEMMs beat
            # gathering the 2-4 non-zero taps per row on CPU (measured), and stay simple.
            yield rows, torch.matmul(self.rows_matrix[rows], masks) @ self.cols_matrix.T


def pixelwise_panoptic(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    info: DatasetInfo,
    out_size: tuple[int, int],
    class_threshold: float = 0.7,
    pixel_threshold: float = 0.4,
    thing_area_limit: float | None = None,
    stuff_area_limit: float | None = None,
    valid_size: tuple[int, int] | None = None,
    input_size: tuple[int, int] | None = None,
) -> PanopticResult:
    """MaX-DeepLab pixel-wise panoptic inference for one image (fact sheet §8.1).

    Args:
        pred_logits: ``[N, K+1]`` class logits, last channel void.
        pred_masks: ``[N, h, w]`` mask logits at stride 4 of the (padded) model input.
        info: categories (contiguous order, things first) and label divisor.
        out_size: ``(H0, W0)``, the original image size of the returned maps.
        class_threshold: slots whose top non-void class probability is below it are dropped.
        pixel_threshold: pixels whose softmax over the kept slots is not above it become void.
        thing_area_limit: thing segments with fewer output pixels become void. ``None``: 100
            pixels of a 641x641 input, scaled with the input's pixel count and to the output.
        stuff_area_limit: the same per stuff class (1600 at 641x641).
        valid_size: ``(Hv, Wv)``, the unpadded top-left part of the input; default: all of it.
        input_size: ``(H, W)`` of the padded model input; default ``4 (h - 1) + 1`` (32k+1 crops).

    Returns:
        ``PanopticResult`` at ``out_size``; its ``semantic`` comes from the threshold-free pass.
    """
    geometry, class_conf, class_pred = _prepare(
        pred_logits, pred_masks, info, out_size, input_size, valid_size,
        thing_area_limit, stuff_area_limit,
    )
    kept = torch.nonzero(class_conf >= class_threshold).squeeze(1)  # [Nk]
    has_kept = kept.numel() > 0

    device = pred_masks.device
    mask_id = torch.full(geometry.out_size, -1, dtype=torch.long, device=device)
    top_slot = torch.empty(geometry.out_size, dtype=torch.long, device=device)
    for rows, logits in geometry.bands(pred_masks):
        max_all, top_slot[rows] = logits.max(dim=0)
        if not has_kept:
            continue
        kept_logits = logits[kept]  # [Nk, r, W0]
        max_kept, best = kept_logits.max(dim=0)
        # Softmax over the kept slots only: deeplab2 sets dropped logits to -99999 first.
        pixel_conf = torch.exp(kept_logits - max_kept).sum(dim=0).reciprocal()
        # A pixel whose overall winner was dropped is void, not handed to the runner-up.
        confident = (pixel_conf > pixel_threshold) & (max_kept == max_all)
        mask_id[rows] = torch.where(confident, kept[best], -1)

    return _assemble(mask_id, top_slot, class_conf, class_pred, info, geometry)


def maskwise_panoptic(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    info: DatasetInfo,
    out_size: tuple[int, int],
    thing_threshold: float = 0.7,
    stuff_threshold: float = 0.5,
    pixel_threshold: float = 0.4,
    overlap_threshold: float = 0.8,
    class_weight: float = 1.0,
    mask_weight: float = 1.0,
    thing_area_limit: float | None = None,
    stuff_area_limit: float | None = None,
    valid_size: tuple[int, int] | None = None,
    input_size: tuple[int, int] | None = None,
) -> PanopticResult:
    """kMaX-DeepLab mask-wise panoptic inference for one image (fact sheet §8.2).

    Args:
        pred_logits, pred_masks, info, out_size, valid_size, input_size: as
            ``pixelwise_panoptic``.
        thing_threshold: class confidence a thing slot needs to be pasted (COCO kMaX 0.7).
        stuff_threshold: the same for stuff slots (COCO kMaX 0.5).
        pixel_threshold: a slot's binary mask is where its softmax probability exceeds this.
        overlap_threshold: a mask is pasted only if more than this fraction of it is still free.
        class_weight, mask_weight: ranking score = conf^class_weight * mean_prob^mask_weight.
        thing_area_limit, stuff_area_limit: as ``pixelwise_panoptic``, applied after pasting.
    """
    geometry, class_conf, class_pred = _prepare(
        pred_logits, pred_masks, info, out_size, input_size, valid_size,
        thing_area_limit, stuff_area_limit,
    )
    is_thing = class_pred < info.num_thing_classes
    candidate = torch.where(is_thing, class_conf >= thing_threshold, class_conf >= stuff_threshold)
    candidates = torch.nonzero(candidate).squeeze(1)  # [Nc]: the only slots that can be pasted

    device = pred_masks.device
    num_candidates = candidates.numel()
    prob_sum = torch.zeros(num_candidates, device=device)
    prob_count = torch.zeros(num_candidates, device=device)
    binary = torch.zeros((num_candidates, *geometry.out_size), dtype=torch.bool, device=device)
    top_slot = torch.empty(geometry.out_size, dtype=torch.long, device=device)
    for rows, logits in geometry.bands(pred_masks):
        max_all, top_slot[rows] = logits.max(dim=0)
        # Softmax over all slots, evaluated for the candidates only: non-candidates are never
        # pasted, and dropping them from the ranking keeps the candidates' relative order.
        log_norm = max_all + torch.exp(logits - max_all).sum(dim=0).log()  # [r, W0]
        probs = torch.exp(logits[candidates] - log_norm)  # [Nc, r, W0]
        detected = probs > pixel_threshold
        prob_sum += (probs * detected).sum(dim=(1, 2))
        prob_count += detected.sum(dim=(1, 2))
        binary[:, rows] = detected

    mean_prob = torch.where(prob_count > 0, prob_sum / prob_count.clamp(min=1), 0.0)
    score = class_conf[candidates].pow(class_weight) * mean_prob.pow(mask_weight)
    # Stable: equal scores keep slot order, as deeplab2's stable argsort.
    order = torch.argsort(score, descending=True, stable=True)

    mask_id = torch.full(geometry.out_size, -1, dtype=torch.long, device=device)
    occupied = torch.zeros(geometry.out_size, dtype=torch.bool, device=device)
    for row, slot in zip(order.tolist(), candidates[order].tolist(), strict=True):
        mask = binary[row]
        new = mask & ~occupied
        # Stays a tensor (no host sync per slot): an empty mask never passes (0 > 0 is false).
        accept = new.sum() > overlap_threshold * mask.sum()
        new &= accept
        mask_id = torch.where(new, slot, mask_id)
        occupied |= new

    return _assemble(mask_id, top_slot, class_conf, class_pred, info, geometry)


#: Post-processors by the name used in configs and on the command line.
POST_PROCESSORS = {"pixelwise": pixelwise_panoptic, "maskwise": maskwise_panoptic}


def _prepare(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    info: DatasetInfo,
    out_size: tuple[int, int],
    input_size: tuple[int, int] | None,
    valid_size: tuple[int, int] | None,
    thing_area_limit: float | None,
    stuff_area_limit: float | None,
) -> tuple[_Geometry, torch.Tensor, torch.Tensor]:
    """Validates one image's arguments; returns its geometry and class predictions ``[N]``.

    The common prologue of both post-processors: checks the prediction shapes against ``info``
    and the sizes (``ValueError`` naming the offending value), then builds the interpolation
    matrices and area limits and takes each slot's (confidence, contiguous class).
    """
    _check_inputs(pred_logits, pred_masks, info)
    geometry = _Geometry.create(
        pred_masks, out_size, input_size, valid_size, thing_area_limit, stuff_area_limit
    )
    class_conf, class_pred = _class_predictions(pred_logits)
    return geometry, class_conf, class_pred


def _class_predictions(pred_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K+1]`` logits -> (confidence ``[N]``, contiguous class ``[N]``), void excluded."""
    probs = pred_logits.float().softmax(dim=-1)[:, :-1]
    return probs.max(dim=-1)


def _assemble(
    mask_id: torch.Tensor,
    top_slot: torch.Tensor,
    class_conf: torch.Tensor,
    class_pred: torch.Tensor,
    info: DatasetInfo,
    geometry: _Geometry,
) -> PanopticResult:
    """Area filters and panoptic encoding of a slot map (``mask_id`` ``[H0, W0]``, -1 void)."""
    device = mask_id.device
    confident = mask_id >= 0
    slot = mask_id.clamp(min=0)
    label = class_pred[slot]  # contiguous class per pixel
    thing = confident & (label < info.num_thing_classes)
    stuff = confident & (label >= info.num_thing_classes)
    # deeplab2 keeps a region iff its pixel count reaches the limit (count > limit - 0.5).
    if geometry.thing_area_limit > 0:
        counts = torch.bincount(slot[thing], minlength=class_pred.numel())
        thing &= counts[slot] >= geometry.thing_area_limit
    if geometry.stuff_area_limit > 0:
        counts = torch.bincount(label[stuff], minlength=info.num_classes)
        stuff &= counts[label] >= geometry.stuff_area_limit

    category_ids = torch.tensor([c.id for c in info.categories], dtype=torch.long, device=device)
    semantic_id = category_ids[label] * info.label_divisor
    panoptic = torch.where(thing, semantic_id + slot + 1, torch.where(stuff, semantic_id, 0))
    segments = segments_from_panoptic(panoptic, class_conf[slot], info)
    # The threshold-free pass for mIoU: every pixel takes its top slot's class.
    semantic = class_pred[top_slot] if class_pred.numel() else torch.full_like(top_slot, IGNORE_LABEL)
    return PanopticResult(
        panoptic=panoptic.cpu().numpy(),
        segments_info=segments,
        semantic=semantic.cpu().numpy(),
    )


def _check_inputs(pred_logits: torch.Tensor, pred_masks: torch.Tensor, info: DatasetInfo) -> None:
    if pred_logits.ndim != 2 or pred_masks.ndim != 3:
        raise ValueError(
            "expected pred_logits [N, K+1] and pred_masks [N, h, w] of one image, got shapes "
            f"{tuple(pred_logits.shape)} and {tuple(pred_masks.shape)}"
        )
    if pred_logits.shape[0] != pred_masks.shape[0]:
        raise ValueError(
            f"pred_logits has {pred_logits.shape[0]} slots but pred_masks {pred_masks.shape[0]}"
        )
    if pred_logits.shape[1] != info.num_classes + 1:
        raise ValueError(
            f"pred_logits has {pred_logits.shape[1]} class channels; dataset '{info.name}' needs "
            f"{info.num_classes} classes + void = {info.num_classes + 1}"
        )
    if pred_masks.shape[0] >= info.label_divisor:
        raise ValueError(
            f"{pred_masks.shape[0]} slots do not fit label divisor {info.label_divisor}: thing "
            "instance ids (slot + 1) must stay below it"
        )
    zero_stuff = [c.name for c in info.categories if c.id <= 0 and not c.isthing]
    if zero_stuff:
        raise ValueError(f"stuff categories need ids >= 1 (0 is void): {zero_stuff}")
