"""MaX-DeepLab's prediction head: a class and a mask per slot (deeplab2 ``MaXDeepLab`` decoder).

- pixel head on the stride-4 feature: depthwise 5x5 + BN + act, 1x1 + BN + act, 1x1 with
  bias (std 0.01), BN, L2-normalise over channels -> ``pixel_feature [B, D, h, w]``;
- mask kernels: linear + BN on the slot feature -> ``[B, N, D]``;
- mask logits ``f . kernel``, then one BN with a single (gamma, beta) shared by all slots
  (gamma starts at 0.1) -> ``pred_masks [B, N, h, w]``;
- class logits: linear with bias (std 0.01) -> ``[B, N, K+1]``, plus a constant
  ``log((K) * 0.9 / 0.1)`` on the void logit (void prior 0.9; an offset, not a bias init).

173,576 parameters for COCO (K = 133, D = 128, 256-channel inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.layers.init import trunc_normal_
from cmt_deeplab.models.layers.norm_act import (
    BN_EPS,
    BN_MOMENTUM,
    ConvBN,
    LinearBN,
    batch_norm,
)
from cmt_deeplab.models.layers.per_image_conv import per_image_pointwise_conv


class PixelHead(nn.Module):
    """``[B, C, h, w] -> [B, D, h, w]`` L2-normalised pixel embeddings."""

    def __init__(
        self, in_channels: int, head_channels: int = 256, out_channels: int = 128,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.depthwise = ConvBN(in_channels, in_channels, 5, groups=in_channels, activation=activation)
        self.pointwise = ConvBN(in_channels, head_channels, 1, activation=activation)
        self.final = nn.Conv2d(head_channels, out_channels, 1)
        trunc_normal_(self.final.weight, 0.01)
        nn.init.zeros_(self.final.bias)
        self.feature_bn = batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_bn(self.final(self.pointwise(self.depthwise(x))))
        return F.normalize(x, dim=1)


class PredictionHead(nn.Module):
    """Class logits and mask logits of ``N`` slots from a pixel feature and slot features."""

    def __init__(
        self,
        num_classes: int,
        pixel_in_channels: int = 256,
        slot_channels: int = 256,
        feature_dim: int = 128,
        head_channels: int = 256,
        void_prior: float = 0.9,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pixel_head = PixelHead(pixel_in_channels, head_channels, feature_dim, activation)
        self.mask_head = LinearBN(slot_channels, feature_dim)
        self.class_head = nn.Linear(slot_channels, num_classes + 1)
        trunc_normal_(self.class_head.weight, 0.01)
        nn.init.zeros_(self.class_head.bias)
        self.mask_bn = nn.BatchNorm2d(1, eps=BN_EPS, momentum=BN_MOMENTUM)
        nn.init.constant_(self.mask_bn.weight, 0.1)
        nn.init.zeros_(self.mask_bn.bias)
        void_bias = torch.zeros(num_classes + 1)
        void_bias[-1] = math.log(num_classes * void_prior / (1.0 - void_prior))
        self.register_buffer("void_bias", void_bias, persistent=False)
        # Set by ``inference.fast.optimize_for_inference`` on an eval-only copy: the mask
        # logits and their BN as one 1x1 convolution per image (``_masks_by_convolution``).
        self.fused_inference = False

    def forward(
        self,
        pixel_input: torch.Tensor,
        class_feature: torch.Tensor | None,
        mask_feature: torch.Tensor,
        pixel_feature: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``pixel_input [B, C, h, w]``, slot features ``[B, N, C_s]`` -> prediction dict.

        A precomputed ``pixel_feature`` skips the pixel head (aux outputs that share it);
        ``class_feature=None`` skips the class head (no ``pred_logits``: a CMT layer's masks
        at inference, where only the assignment reads them).
        """
        if pixel_feature is None:
            pixel_feature = self.pixel_head(pixel_input)
        kernels = self.mask_head(mask_feature)  # [B, N, D]
        # Under autocast the product runs in bf16 through oneDNN either way; the batched
        # matmul then rounds as the module does.
        if self.fused_inference and not torch.is_autocast_enabled(pixel_feature.device.type):
            masks = self._masks_by_convolution(pixel_feature, kernels)
        else:
            masks = torch.einsum("bdhw,bnd->bnhw", pixel_feature, kernels)
            batch, slots, height, width = masks.shape
            masks = self.mask_bn(masks.reshape(batch, 1, slots * height, width))
            masks = masks.reshape(batch, slots, height, width)
        prediction = {"pred_masks": masks, "pixel_feature": pixel_feature}
        if class_feature is not None:
            prediction = {"pred_logits": self.class_head(class_feature) + self.void_bias,
                          **prediction}
        return prediction

    def _masks_by_convolution(self, pixel_feature: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Eval-mode mask logits ``BN(f . kernel)`` as a 1x1 convolution of ``f [B, D, h, w]``
        whose weights are the image's ``N`` kernels (``[B, N, D]``) times the BN's scale, and
        whose bias is its shift: ``[B, N, h, w]``, in ``f``'s memory format (channels-last in
        an inference copy). The BN's pass over the logits is gone
        (``layers.per_image_conv``)."""
        bn = self.mask_bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # one (gamma, beta) for all
        shift = bn.bias - bn.running_mean * scale
        return per_image_pointwise_conv(pixel_feature, kernels * scale,
                                        shift.expand(kernels.shape[1]))
