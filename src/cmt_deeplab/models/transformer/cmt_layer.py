"""The Clustering Mask Transformer layer of CMT-DeepLab (Yu et al., CVPR 2022).

The layer treats the N object queries as *cluster centres* and the pixels as the points
to cluster. Our reconstruction (``shared/design/architecture.md`` §5.3, marked [R] there:
the main paper text is unavailable; layout and widths are fitted to its params and FLOPs):

1. bottlenecks ``c' = act(BN(C W))`` and ``p' = act(BN(act(P) W))`` to D channels;
   ``[q_c, k_c, v_c] = BN(c' W)``, ``[k_p, v_p] = BN(p' W)``.
2. *feature affinity*: a per-layer MaX predictor on ``(p', c')`` gives class logits and
   ``Z_feat = BN(normalize(PixelHead(p')) . MaskHead(c'))``, ``[B, N, h, w]``.
3. *location-sensitive clustering*: an MLP on ``c'`` predicts a Gaussian reference mask per
   centre, ``R_n(x) = -1/2 sum_axes ((x - mu_n) / sigma_n)^2`` (normalised coordinates).
4. *residual assignment*: ``Z = Z_feat + Up(Z_prev) + R``; the soft assignment is
   ``A = softmax_N(Z)``. ``Z`` is this layer's mask prediction and the next layer's ``Z_prev``.
5. *centre update = clustering + cross-attention*:
   ``C <- act(C + drop(BN0(W BN(A^T v_p))) + drop(BN0(W MaXAttention(q_c, [k_p; k_c], [v_p; v_c]))))``,
   then the FFN ``C <- act(C + drop(FFN(C)))``.
6. *frequent pixel update*: every pixel gathers the values of its clusters,
   ``U = act(BN(A v_c))``, concatenated with its (y, x) in [-1, 1] (CoordConv), and
   ``P <- P + drop(BN0(W [U; y; x]))``.

Each part is a constructor switch (``use_clustering_update``, ``use_pixel_update``,
``use_residual_assignment``, ``use_reference_mask``, ``use_coord_conv``), so the paper's
ablations can be run. With all of them off the centre update is exactly MaX-DeepLab's
dual-path layer without its pixel-to-memory feedback (module names match, so its weights load).

Per-layer parameters at D = 256, N x M = 128 x 256: 1,725,212 + 516 C_p.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from cmt_deeplab.models.heads.prediction_head import PredictionHead
from cmt_deeplab.models.layers.block_group import TransformerState
from cmt_deeplab.models.layers.drop_path import DropPath
from cmt_deeplab.models.layers.float32 import float32_region, upcast
from cmt_deeplab.models.layers.init import trunc_normal_
from cmt_deeplab.models.layers.norm_act import BN_EPS, BN_MOMENTUM, ConvBN, LinearBN
from cmt_deeplab.models.layers.per_image_conv import per_image_pointwise_conv
from cmt_deeplab.models.layers.resized_fuse import resize_bilinear
from cmt_deeplab.models.transformer.dual_path_base import DualPathBase

_MIN_SIGMA = 1e-3


def normalized_coordinates(
    height: int, width: int, device: torch.device, dtype: torch.dtype, low: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([H], [W])`` pixel centres on ``[low, 1]``, corner-aligned (deeplab2's convention)."""
    return (_axis_coordinates(height, low, device, dtype),
            _axis_coordinates(width, low, device, dtype))


def _axis_coordinates(
    length: int, low: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``[L]`` evenly spaced on ``[low, 1]``; one sample sits in the middle."""
    if torch.compiler.is_exporting():
        # An exported graph with a symbolic length: linspace's length would be specialised
        # (baked in) there, an arange follows it. Equal to linspace within float rounding.
        return torch.arange(length, device=device, dtype=dtype) * ((1.0 - low) / max(length - 1, 1)) + low
    if length > 1:
        return torch.linspace(low, 1.0, length, device=device, dtype=dtype)
    return torch.full((1,), (low + 1) / 2, device=device, dtype=dtype)


def coordinate_channels(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``[2, H, W]`` CoordConv channels: (y, x) pixel centres on ``[-1, 1]``.

    Cached per size outside an export or ``torch.compile`` (every CMT layer of a forward asks
    for the same few sizes); the cached tensor is read-only.
    """
    if torch.compiler.is_compiling():
        return _build_coordinate_channels(height, width, device, dtype)
    return _cached_coordinate_channels(height, width, torch.device(device), dtype)


def _build_coordinate_channels(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    ys, xs = normalized_coordinates(height, width, device, dtype, -1.0)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))


@functools.lru_cache(maxsize=32)
def _cached_coordinate_channels(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    # A normal tensor even when first asked for under inference mode: a training forward
    # may concatenate it into what its backward saves.
    with torch.inference_mode(False):
        return _build_coordinate_channels(height, width, device, dtype)


def gaussian_reference_logits(
    mu: torch.Tensor, sigma: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """``mu, sigma [B, N, 2]`` (y, x in [0, 1]) -> ``R [B, N, H, W]`` Gaussian log-masks."""
    ys, xs = normalized_coordinates(height, width, mu.device, mu.dtype)
    dy = (ys[None, None, :] - mu[..., 0:1]) / sigma[..., 0:1]  # [B, N, H]
    dx = (xs[None, None, :] - mu[..., 1:2]) / sigma[..., 1:2]  # [B, N, W]
    return -0.5 * (dy.square()[..., :, None] + dx.square()[..., None, :])


class ReferenceMaskHead(nn.Module):
    """Dynamic reference mask: ``c' [B, N, D] -> (mu, sigma) [B, N, 2] float32 each``.

    Float32 under autocast (``layers.float32``): with sigma down to ~0.01, ``R = -1/2
    ((x - mu) / sigma)^2`` reaches hundreds and magnifies rounding, and bf16 rounds mu to steps
    of ~4e-3 (at 0.5), sigma to ~0.4% and R to ~0.4%: in a bf16 run the assignment logits
    moved by 0.5-1.1 on average (half that with this head in float32).
    ``gaussian_reference_logits`` works in mu's dtype, so R is float32 too. Two linears on ``N`` centres: no measurable cost.
    """

    keep_float32 = True

    def __init__(self, channels: int, activation: str = "relu") -> None:
        super().__init__()
        self.hidden = LinearBN(channels, channels, activation)
        self.out = nn.Linear(channels, 4)
        trunc_normal_(self.out.weight, 0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with float32_region(centers):
            params = self.out(self.hidden(upcast(centers)))
            mu = params[..., :2].sigmoid()
            sigma = F.softplus(params[..., 2:]) + _MIN_SIGMA
        return mu, sigma


class ClusteringMaskTransformerLayer(DualPathBase):
    """``(P [B, C_p, H, W], C [B, N, M], state) -> (P', C')``; see the module docstring.

    Records in ``state``: ``prev_mask_logits`` (Z), one auxiliary prediction
    (``pred_logits``, ``pred_masks``, ``pixel_feature``, ``ref_mu``, ``ref_sigma``, at this
    layer's resolution) and, with ``state.return_maps``, the maps ``clustering`` (A) and
    ``attention`` (cross-attention over pixels, averaged over heads), both ``[B, N, H, W]``.
    """

    def __init__(
        self,
        pixel_channels: int,
        num_classes: int,
        memory_channels: int = 256,
        filters: int = 128,
        num_heads: int = 8,
        bottleneck_expansion: float = 2.0,
        key_expansion: float = 1.0,
        value_expansion: float = 2.0,
        ffn_channels: int = 2048,
        pixel_feature_dim: int = 128,
        head_channels: int = 256,
        use_clustering_update: bool = True,
        use_pixel_update: bool = True,
        use_residual_assignment: bool = True,
        use_reference_mask: bool = True,
        use_coord_conv: bool = True,
        detach_assignment: bool = False,
        normalize_cluster_mass: bool = False,
        drop_path_keep_prob: float = 1.0,
        activation: str = "relu",
    ) -> None:
        # Names match DualPathTransformerLayer where the computation is the same: MaX's
        # memory path with memory keys/values (M2M) and no pixel queries (no P2M).
        super().__init__(
            pixel_channels, memory_channels, filters, num_heads, bottleneck_expansion,
            key_expansion, value_expansion, ffn_channels, activation,
            memory_kv=True, pixel_query=False,
        )
        bottleneck, value = self.bottleneck_channels, self.value_channels
        self.use_clustering_update = use_clustering_update
        self.use_pixel_update = use_pixel_update
        self.use_residual_assignment = use_residual_assignment
        self.use_reference_mask = use_reference_mask
        self.use_coord_conv = use_coord_conv and use_pixel_update
        self.detach_assignment = detach_assignment
        self.normalize_cluster_mass = normalize_cluster_mass
        self.predictor = PredictionHead(
            num_classes, bottleneck, bottleneck, pixel_feature_dim, head_channels,
            activation=activation,
        )
        if use_reference_mask:
            self.reference_mask = ReferenceMaskHead(bottleneck, activation)
        if use_clustering_update:
            self.cluster_value_bn = nn.BatchNorm1d(value, eps=BN_EPS, momentum=BN_MOMENTUM)
            self.cluster_conv3 = LinearBN(value, memory_channels, zero_init=True)
        if use_pixel_update:
            self.pixel_value_bn = nn.BatchNorm1d(value, eps=BN_EPS, momentum=BN_MOMENTUM)
            extra = 2 if self.use_coord_conv else 0
            self.pixel_conv3 = ConvBN(value + extra, pixel_channels, 1, zero_init=True)
        self.drop_pixel = DropPath(drop_path_keep_prob)
        self.drop_attention = DropPath(drop_path_keep_prob)
        self.drop_cluster = DropPath(drop_path_keep_prob)
        self.drop_ffn = DropPath(drop_path_keep_prob)
        # Set by ``inference.fast.optimize_for_inference`` on an eval-only copy: the pixel
        # update's BN moves onto the centre values (``_gather_folded``).
        self.fused_inference = False

    def forward(
        self, pixels: torch.Tensor, centers: torch.Tensor, state: TransformerState | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        state = state if state is not None else TransformerState()
        batch, _, height, width = pixels.shape
        key, value = self.key_channels, self.value_channels
        # c' [B, N, D], p' [B, D, H, W]
        center_space, pixel_space, center_qkv, pixel_kv = self.project(pixels, centers)
        center_q, center_k, center_v = center_qkv.split([key, key, value], -1)
        pixel_k, pixel_v = pixel_kv.split([key, value], -1)  # [B, HW, K], [B, HW, V]

        # Feature affinity, reference mask and residual path -> the assignment logits Z.
        # Without aux outputs (inference) the class head has no reader: left out.
        prediction = self.predictor(
            pixel_space, center_space if state.record_aux else None, center_space
        )
        mask_logits = prediction["pred_masks"]  # [B, N, H, W]
        if self.use_reference_mask:
            mu, sigma = self.reference_mask(center_space)
            mask_logits = mask_logits + gaussian_reference_logits(mu, sigma, height, width)
            prediction["ref_mu"], prediction["ref_sigma"] = mu, sigma
        if self.use_residual_assignment and state.prev_mask_logits is not None:
            mask_logits = mask_logits + resize_bilinear(state.prev_mask_logits, (height, width))
        prediction["pred_masks"] = mask_logits
        state.prev_mask_logits = mask_logits
        if state.record_aux:
            state.aux_outputs.append(prediction)
        if self.fused_inference:
            # Softmax over the innermost dimension of channels-last logits; A^T is a view.
            assignment_map = mask_logits.permute(0, 2, 3, 1).softmax(dim=-1)  # [B, H, W, N]
            assignment = assignment_map.flatten(1, 2).transpose(1, 2)
        else:
            assignment = mask_logits.flatten(2).softmax(dim=1)  # A^T [B, N, HW], softmax over N
        if self.detach_assignment:
            assignment = assignment.detach()

        # Cluster-centre update: the original cross-attention (M2P + M2M) ...
        retrieved, weights = self.attend_memory(
            center_q, [pixel_k, center_k], [pixel_v, center_v], state.return_maps
        )
        update = self.drop_attention(self.memory_conv3(retrieved))
        # ... plus the clustering (k-means style) update from the soft assignment.
        if self.use_clustering_update:
            clustered = assignment @ pixel_v  # [B, N, V]
            if self.normalize_cluster_mass:
                clustered = clustered / (assignment.sum(-1, keepdim=True) + 1e-5)
            clustered = self.cluster_value_bn(clustered.reshape(-1, value)).reshape_as(clustered)
            update = update + self.drop_cluster(self.cluster_conv3(clustered))
        centers_out = self.act(centers + update)
        centers_out = self.act(centers_out + self.drop_ffn(self.ffn(centers_out)))

        # Frequent pixel update from the clustering result, with coordinate channels.
        if self.use_pixel_update:
            if self.fused_inference:
                gathered = self._gather_folded(assignment_map, center_v)  # [B, V, H, W]
            else:
                gathered = assignment.transpose(1, 2) @ center_v  # [B, HW, V]
                gathered = self.act(self.pixel_value_bn(gathered.reshape(-1, value)))
                gathered = gathered.reshape(batch, height * width, value)
                gathered = gathered.transpose(1, 2).reshape(batch, value, height, width)
            if self.use_coord_conv:
                coords = coordinate_channels(height, width, pixels.device, pixels.dtype)[None]
                # Channels-last like ``gathered``: the concatenation then is too, and the
                # convolution after it takes it without a copy.
                coords = coords.contiguous(memory_format=torch.channels_last)
                gathered = torch.cat([gathered, coords.expand(batch, -1, -1, -1)], dim=1)
            pixels = pixels + self.drop_pixel(self.pixel_conv3(gathered))

        if state.return_maps:
            hw = height * width
            state.maps.append({
                "clustering": assignment.detach().reshape(batch, -1, height, width),
                "attention": weights[..., :hw].mean(1).detach().reshape(batch, -1, height, width),
            })
        return pixels, centers_out

    def _gather_folded(self, assignment_map: torch.Tensor, center_v: torch.Tensor) -> torch.Tensor:
        """Eval-mode ``act(BN(A center_v))`` with the BN applied to the N centre values.

        ``A`` sums to 1 over N at every pixel, so the per-channel affine BN moves through the
        product: a ``[B, N, V]`` scale-and-shift instead of one over ``[B, HW, V]`` (equal
        within float rounding). The product is a 1x1 convolution of the assignment map
        (``[B, H, W, N]``, read as a channels-last ``[B, N, H, W]``) whose weights are the
        image's centre values (``layers.per_image_conv``). Returns ``[B, V, H, W]``,
        channels-last.
        """
        bn = self.pixel_value_bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        values = torch.addcmul(shift, center_v, scale)  # [B, N, V]
        maps = assignment_map.permute(0, 3, 1, 2)  # [B, N, H, W], channels-last
        return self.act(per_image_pointwise_conv(maps, values.transpose(1, 2)))
