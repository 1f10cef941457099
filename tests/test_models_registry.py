"""The model and backbone registries: what a built model records about its build, a new
backbone as one registration, and bad arguments."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import cmt_deeplab
from cmt_deeplab.models import model_spec
from cmt_deeplab.models.backbones import build_backbone, list_backbones, register_backbone
from cmt_deeplab.models.layers.norm_act import ConvBN


@register_backbone("strided-convs")
class StridedConvs(torch.nn.Module):
    """A backbone in a few lines: one strided conv per stage (strides 2, 4, 8, 16, 16)."""

    def __init__(self, width_multiplier: float = 1.0, **unused) -> None:
        super().__init__()
        widths = [int(16 * width_multiplier * 2**i) for i in range(5)]
        strides = [2, 2, 2, 2, 1]
        self.stages = torch.nn.ModuleList(
            ConvBN(c_in, c_out, 3, stride=s, activation="relu")
            for c_in, c_out, s in zip([3, *widths[:-1]], widths, strides, strict=True)
        )
        self.stage_channels = {f"stage{i + 1}": w for i, w in enumerate(widths)}

    def conv_block(self, group_stride: int) -> str:
        return "bottleneck"

    def forward(self, images, memory=None, state=None, feedback=None):
        endpoints, x = {}, images
        for index, stage in enumerate(self.stages):
            x = stage(x)
            endpoints[f"stage{index + 1}"] = x
        return endpoints, memory


def _layout(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def test_model_spec_rebuilds_the_same_model():
    with torch.device("meta"):
        model = cmt_deeplab.build_model("max-deeplab-tiny", num_classes=9, num_thing_classes=2,
                                        num_slots=12, use_semantic_head=False)
        spec = model_spec(model)
        assert spec.name == "max-deeplab-tiny"
        assert dict(spec.kwargs) == {"num_classes": 9, "num_thing_classes": 2, "num_slots": 12,
                                     "use_semantic_head": False}
        assert _layout(cmt_deeplab.build_model(spec.name, **spec.kwargs)) == _layout(model)


def test_model_spec_is_read_only_and_survives_copies():
    with torch.device("meta"):
        model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_slots=8)
    spec = model_spec(model)
    with pytest.raises(TypeError):
        spec.kwargs["num_classes"] = 3  # type: ignore[index]
    assert model_spec(copy.deepcopy(model)) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_model_spec_of_a_module_not_from_build_model_is_a_clear_error():
    with pytest.raises(ValueError, match="Linear has no ModelSpec: build it with .*build_model"):
        model_spec(torch.nn.Linear(2, 2))


def test_slot_table_rows_and_max_num_slots_survive_a_rebuild():
    with torch.device("meta"):
        model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_slots=12, max_num_slots=20)
        assert model.centers.weight.shape[0] == 20
        again = cmt_deeplab.build_model(**{"name": model_spec(model).name, **model_spec(model).kwargs})
        assert again.centers.weight.shape[0] == 20
        assert cmt_deeplab.build_model("cmt-deeplab-tiny", num_slots=12).centers.weight.shape[0] == 12
        # A smaller maximum than the slots in use still gives one row per slot.
        narrow = cmt_deeplab.build_model("max-deeplab-tiny", num_slots=12, max_num_slots=4)
        assert narrow.memory.weight.shape[0] == 12


@pytest.mark.parametrize("num_slots", [0, -3])
def test_non_positive_num_slots_is_named(num_slots):
    with pytest.raises(ValueError, match=f"num_slots must be positive, got {num_slots}"):
        cmt_deeplab.build_model("cmt-deeplab-tiny", num_slots=num_slots)


def test_sequences_from_yaml_become_the_config_types():
    """Checkpoint configs come back from YAML with lists and dicts where the configs hold
    tuples and ``DecoderStage``s."""
    from cmt_deeplab.models import DecoderStage

    stages = [[16, 0, 1, 64, True],
              {"stride": 16, "fuse_channels": 64, "num_blocks": 1, "filters": 32, "clustering": True},
              [8, 32, 1, 16, True], [4, 16, 1, 16, False]]
    with torch.device("meta"):
        model = cmt_deeplab.build_model("cmt-deeplab-tiny", decoder=stages,
                                        backbone_num_blocks=[1, 1, 2, 1], semantic_projections=[16, 8])
        reference = cmt_deeplab.build_model("cmt-deeplab-tiny")
    assert model.config == reference.config
    assert model.config.decoder[1] == DecoderStage(16, 64, 1, 32, True)
    assert isinstance(model.config.backbone_num_blocks, tuple)


def test_the_paper_backbones_are_registered():
    assert {"resnet", "resnet_beta", "wider_resnet"} <= set(list_backbones())
    with torch.device("meta"):
        backbone = build_backbone("wider_resnet", num_blocks=(1, 1, 1, 1))
    assert backbone.conv_block(16) == "basic" and backbone.conv_block(32) == "wide_bottleneck"


def test_a_registered_backbone_serves_a_model():
    torch.manual_seed(0)
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", backbone_type="strided-convs",
                                    num_classes=5, num_thing_classes=2, num_slots=8).train()
    assert isinstance(model.backbone, StridedConvs)
    out = model(torch.randn(2, 3, 65, 65))
    assert out["pred_masks"].shape == (2, 8, 17, 17)
    assert out["semantic_logits"].shape == (2, 5, 17, 17)


def test_unknown_backbone_type_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown backbone type 'resnet-9000'; registered: .*resnet_beta"):
        cmt_deeplab.build_model("cmt-deeplab-tiny", backbone_type="resnet-9000")
