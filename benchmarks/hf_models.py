"""HF transformers peers for the benchmarks (random init; `pip install .[bench]`)."""

from __future__ import annotations

import torch


def available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def maskformer_swin_b() -> torch.nn.Module:
    """MaskFormer with a Swin-B backbone (102M params), as in the CMT paper's Table 2."""
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, SwinConfig

    swin = SwinConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
                      image_size=384, out_features=["stage1", "stage2", "stage3", "stage4"])
    return MaskFormerForInstanceSegmentation(MaskFormerConfig(backbone_config=swin, num_labels=133))


def mask2former_r50() -> torch.nn.Module:
    """Mask2Former with a ResNet-50 backbone (HF's own ResNet, no timm)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig

    resnet = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    return Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=resnet, num_labels=133))


PEERS = {"maskformer-swin-b": maskformer_swin_b, "mask2former-r50": mask2former_r50}
