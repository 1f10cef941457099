"""Parameter and MAC counts against deeplab2's unit tests and the paper (meta device: fast)."""

from __future__ import annotations

import pytest
import torch

import cmt_deeplab
from cmt_deeplab.models import count_parameters
from cmt_deeplab.models.backbones import axial_resnet50, axial_resnet104, resnet50
from cmt_deeplab.models.heads.prediction_head import PredictionHead
from cmt_deeplab.models.heads.semantic_head import SemanticHead
from cmt_deeplab.models.layers.blocks import ResidualBlock
from cmt_deeplab.models.transformer.cmt_layer import ClusteringMaskTransformerLayer
from cmt_deeplab.models.transformer.dual_path import DualPathTransformerLayer
from cmt_deeplab.utils.flops import count_macs


def _count(build, paper: bool = False) -> int:
    with torch.device("meta"):
        return count_parameters(build(), paper=paper)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (resnet50, 23_508_032),
        (lambda: resnet50(beta=True), 23_631_808),
        (axial_resnet50, 41_343_424),
        (axial_resnet104, 81_642_112),
        (lambda: ResidualBlock(1024, 256, "axial"), 2_238_816),
        (lambda: ResidualBlock(2048, 512, "axial"), 8_671_840),
        (lambda: DualPathTransformerLayer(2048), 2_503_712),
        (lambda: PredictionHead(133), 173_576),
        (lambda: SemanticHead(134), 15_856_742),
    ],
)
def test_unit_counts_match_deeplab2(build, expected):
    assert _count(build) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("max-deeplab-s", 61_900_200), ("max-deeplab-l", 450_763_880)],
)
def test_max_deeplab_counts_are_exact(name, expected):
    assert _count(lambda: cmt_deeplab.build_model(name), paper=True) == expected


@pytest.mark.parametrize(
    ("name", "paper", "reconstructed"),
    [
        ("cmt-deeplab-s", 94.9e6, 94_818_500),
        ("cmt-deeplab-l", 135.2e6, 135_117_188),
        ("cmt-deeplab-l-rfn", 270.3e6, 270_201_608),
    ],
)
def test_cmt_counts_within_one_percent_of_paper(name, paper, reconstructed):
    count = _count(lambda: cmt_deeplab.build_model(name), paper=True)
    assert count == reconstructed
    assert abs(count / paper - 1) < 0.01


def test_cmt_r50_and_tiny_counts():
    assert _count(lambda: cmt_deeplab.build_model("cmt-deeplab-r50"), paper=True) == 76_983_108
    tiny = _count(lambda: cmt_deeplab.build_model("cmt-deeplab-tiny"))
    assert tiny <= 3_000_000


@pytest.mark.parametrize("channels", [2048, 1024, 512])
def test_cmt_layer_count_formula(channels):
    assert _count(lambda: ClusteringMaskTransformerLayer(channels, 133)) == 1_725_212 + 516 * channels


def test_auxiliary_semantic_branch_is_excluded_from_paper_count():
    model = lambda: cmt_deeplab.build_model("max-deeplab-s")  # noqa: E731
    # 133 classes here (void is the class head's extra channel), 134 in deeplab2's COCO count.
    assert _count(model) - _count(model, paper=True) == 15_856_742 - 257


@pytest.mark.parametrize(
    ("name", "paper_gmacs", "tolerance"),
    [
        ("max-deeplab-s", 291, 0.02),
        ("cmt-deeplab-s", 396, 0.03),
        ("cmt-deeplab-l", 553, 0.03),
        ("cmt-deeplab-l-rfn", 1114, 0.03),
    ],
)
def test_macs_at_paper_input_size(name, paper_gmacs, tolerance):
    gmacs = count_macs(lambda: cmt_deeplab.build_model(name), 800, 1200) / 1e9
    assert abs(gmacs / paper_gmacs - 1) < tolerance, gmacs


def test_macs_scale_with_input_area():
    small = count_macs(lambda: cmt_deeplab.build_model("cmt-deeplab-tiny"), 97, 97)
    large = count_macs(lambda: cmt_deeplab.build_model("cmt-deeplab-tiny"), 193, 193)
    # Convolutions scale with the area (x4); the slot-only FFNs do not.
    assert 2.5 < large / small < 4.5


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_flop_counter_mode_as_users_count(mode):
    """``FlopCounterMode`` on cmt-deeplab-s with trainable parameters under ``no_grad`` /
    ``inference_mode``, as users count FLOPs: the slot table returns no view of a bare
    Parameter there (a module-tracker hook needs a grad_fn on such a view)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = cmt_deeplab.build_model("cmt-deeplab-s").eval()
    assert all(p.requires_grad for p in model.parameters())
    images = torch.empty(1, 3, 65, 97, device="meta")
    with mode(), FlopCounterMode(display=False) as counter:
        model(images)
    expected = count_macs(lambda: cmt_deeplab.build_model("cmt-deeplab-s"), 65, 97)
    assert counter.get_total_flops() == 2 * expected > 0
