"""What an exported graph computes: the network outputs, or the panoptic map and slot table.

``NetworkGraph`` wraps an inference copy of a model (BNs folded, ``eval()``: no drop path,
no auxiliary semantic branch) and returns plain tensors in a fixed order, which is what
``torch.export`` and ONNX need instead of the model's dict. ``PanopticGraph`` appends the
pixel-wise (MaX) post-processing of ``inference.post_processing.pixelwise_panoptic`` at the
input's own size, batched and in tensor ops only (argmax, gathers, sums), so the graph ends
in the panoptic map.
"""

from __future__ import annotations

import torch
from torch import nn

from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.inference.post_processing import REFERENCE_AREA_LIMITS, REFERENCE_INPUT_PIXELS

#: Outputs of a graph without post-processing, in order.
NETWORK_OUTPUTS = ("pred_logits", "pred_masks", "pixel_feature")
#: Outputs of a graph with post-processing, in order. Rows of the ``slot_*`` tables are slots;
#: one segment is the slots that share a ``slot_segment_id`` (its score is their maximum,
#: its area their sum); a slot with ``slot_segment_id`` 0 has no pixel.
PANOPTIC_OUTPUTS = ("panoptic", "slot_segment_id", "slot_category_id", "slot_score", "slot_area")
#: The stride of the mask logits relative to the input.
MASK_STRIDE = 4


class NetworkGraph(nn.Module):
    """``images [B, 3, H, W] -> (pred_logits [B, N, K+1], pred_masks [B, N, h, w],
    pixel_feature [B, D, h, w])`` of an inference-only model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[name] for name in NETWORK_OUTPUTS)


class PanopticGraph(nn.Module):
    """``images [B, 3, H, W]`` -> the pixel-wise panoptic prediction at ``H x W``.

    Returns ``panoptic [B, H, W]`` int64 (``category_id * label_divisor + instance``, 0 void),
    ``slot_segment_id [B, N]`` int64, ``slot_category_id [B, N]`` int64 (dataset ids),
    ``slot_score [B, N]`` float (class confidence) and ``slot_area [B, N]`` int64 (pixels).
    Thresholds and area limits are those of ``pixelwise_panoptic`` for an image that fills
    the input (limits scale with ``H * W``).
    """

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        class_threshold: float = 0.7,
        pixel_threshold: float = 0.4,
    ) -> None:
        super().__init__()
        self.network = NetworkGraph(model)
        self.class_threshold = class_threshold
        self.pixel_threshold = pixel_threshold
        self.label_divisor = info.label_divisor
        self.num_thing_classes = info.num_thing_classes
        self.register_buffer(
            "category_ids", torch.tensor([c.id for c in info.categories], dtype=torch.long),
            persistent=False,
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pred_logits, pred_masks, _ = self.network(images)
        height, width = images.shape[-2:]
        logits = upsample_stride_grid(pred_masks.float(), height, width)  # [B, N, H, W]
        num_slots = logits.shape[1]
        class_conf, class_pred = pred_logits.float().softmax(dim=-1)[..., :-1].max(dim=-1)
        kept = class_conf >= self.class_threshold  # [B, N]

        max_all = logits.max(dim=1).values  # [B, H, W]
        # Dropped slots leave the softmax (deeplab2 sets their logits to -99999).
        lowest = torch.finfo(logits.dtype).min
        kept_logits = torch.where(kept[:, :, None, None], logits, lowest)
        max_kept, best = kept_logits.max(dim=1)
        pixel_conf = torch.exp(kept_logits - max_kept[:, None]).sum(dim=1).reciprocal()
        # A pixel whose overall winner was dropped is void, not handed to the runner-up.
        confident = (pixel_conf > self.pixel_threshold) & (max_kept == max_all)
        confident &= kept.any(dim=1)[:, None, None]
        slot = best  # [B, H, W]

        label = torch.gather(class_pred, 1, slot.flatten(1)).view_as(slot)
        is_thing_slot = class_pred < self.num_thing_classes  # [B, N]
        thing = confident & (label < self.num_thing_classes)
        stuff = confident & ~(label < self.num_thing_classes)
        thing_limit, stuff_limit = area_limits(height, width)
        slots = torch.arange(num_slots, device=images.device)
        # Pixels per slot: [B, N] (a one-hot sum: bincount does not export).
        one_hot = slot[:, None] == slots[None, :, None, None]  # [B, N, H, W]
        slot_pixels = (one_hot & confident[:, None]).sum(dim=(2, 3))
        thing_ok = torch.gather(slot_pixels >= thing_limit, 1, slot.flatten(1)).view_as(slot)
        # Pixels per stuff class: the slot counts summed by their class.
        class_one_hot = class_pred[:, :, None] == torch.arange(
            self.category_ids.numel(), device=images.device)  # [B, N, K]
        stuff_pixels = (slot_pixels * ~is_thing_slot)[:, None, :].float() @ class_one_hot.float()
        stuff_ok = torch.gather(stuff_pixels[:, 0] >= stuff_limit, 1,
                                label.flatten(1)).view_as(label)
        thing &= thing_ok
        stuff &= stuff_ok

        semantic_id = self.category_ids[label] * self.label_divisor
        zero = torch.zeros_like(semantic_id)
        panoptic = torch.where(thing, semantic_id + slot + 1,
                               torch.where(stuff, semantic_id, zero))
        area = (one_hot & (thing | stuff)[:, None]).sum(dim=(2, 3))  # [B, N]
        slot_category = self.category_ids[class_pred]
        slot_id = slot_category * self.label_divisor + torch.where(is_thing_slot, slots + 1, 0)
        slot_id = torch.where(area > 0, slot_id, 0)
        return panoptic, slot_id, slot_category, class_conf, area


def upsample_stride_grid(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[B, N, h, w]`` on the corner-aligned stride-4 grid -> ``[B, N, H, W]`` at the pixels.

    ``inference.resize.stride_grid_matrix`` as two gathers and blends, so that it exports
    with symbolic sizes: pixel ``i`` reads sample ``i / 4``, held at the last sample.
    """
    return _upsample_axis(_upsample_axis(masks, height, 2), width, 3)


def _upsample_axis(x: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    last = x.shape[dim] - 1
    source = torch.arange(length, device=x.device, dtype=torch.float32) / MASK_STRIDE
    source = torch.clamp(source, max=last)
    low = source.floor().long()
    high = torch.clamp(low + 1, max=last)
    frac = source - low.float()
    shape = [1] * x.dim()
    shape[dim] = length
    frac = frac.view(shape)
    return x.index_select(dim, low) * (1.0 - frac) + x.index_select(dim, high) * frac


def area_limits(height: int, width: int) -> tuple[float, float]:
    """``pixelwise_panoptic``'s default (thing, stuff) limits for an image filling the input."""
    scale = height * width / REFERENCE_INPUT_PIXELS
    thing, stuff = REFERENCE_AREA_LIMITS
    return thing * scale, stuff * scale
