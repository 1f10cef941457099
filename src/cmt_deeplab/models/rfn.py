"""Recursive Feature Network (CMT-DeepLab supplementary §1, after DetectoRS):
two complete CMT-DeepLab networks stacked.

- Net 2's stride-4 *encoder* feature (stage 2 output) is averaged with net 1's stride-4
  *decoder* feature (both 256 channels), a plain average instead of DetectoRS's fusion module.
- Both nets share one set of cluster centres: net 1 starts from the learnable table, net 2
  from net 1's final centres ("updated sequentially").
- Net 1's final and per-layer predictions are returned in ``aux_outputs`` so that they are
  supervised with the Hungarian matching of the final output.

CMT-L-RFN: 2 x 135,117,188 - 32,768 (one centre table) = 270,201,608 parameters.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cmt_deeplab.models.cmt_deeplab import L_DEFAULTS, CMTDeepLab, CMTDeepLabConfig
from cmt_deeplab.models.layers.block_group import TransformerState
from cmt_deeplab.models.meta_arch import SlotTable, check_images
from cmt_deeplab.models.registry import register_model


class RecursiveCMTDeepLab(nn.Module):
    def __init__(self, config: CMTDeepLabConfig) -> None:
        super().__init__()
        self.config = config
        self.centers = SlotTable(config.num_slots, config.memory_channels, config.max_num_slots)
        first = CMTDeepLabConfig(**{**config.__dict__, "use_semantic_head": False})
        self.net1 = CMTDeepLab(first, own_centers=False)
        self.net2 = CMTDeepLab(config, own_centers=False)
        # False (an inference copy, ``inference.fast``): no per-layer or net-1 predictions.
        self.return_aux_outputs = True

    def forward(self, images: torch.Tensor, return_maps: bool = False) -> dict:
        check_images(images)
        aux = self.return_aux_outputs
        state1 = TransformerState(return_maps=return_maps, record_aux=aux)
        features1 = self.net1.forward_features(images, self.centers(images.shape[0]), state1)
        state2 = TransformerState(return_maps=return_maps, record_aux=aux)
        features2 = self.net2.forward_features(
            images, features1["centers"], state2,
            feedback={"stage2": features1["decoder_output"]},
        )
        outputs = self.net2.predict(features2, state2)
        if aux:  # net 1's head feeds nothing but these
            outputs1 = self.net1.predict(features1, state1)
            net1_final = {k: v for k, v in outputs1.items() if k != "aux_outputs"}
            outputs["aux_outputs"] = outputs1["aux_outputs"] + [net1_final] + outputs["aux_outputs"]
        if self.training and self.net2.semantic_head is not None:
            outputs["semantic_logits"] = self.net2.semantic_logits(features2["endpoints"])
        if return_maps:
            outputs["maps"] = state1.maps + state2.maps
        return outputs


@register_model("cmt-deeplab-l-rfn", CMTDeepLabConfig, "Axial-R104-RFN", "270.3M",
                "two CMT-L nets, shared cluster centres")
def cmt_deeplab_l_rfn(**kwargs: Any) -> RecursiveCMTDeepLab:
    return RecursiveCMTDeepLab(CMTDeepLabConfig(**{**L_DEFAULTS, **kwargs}))
