"""The model registry: what a built model records about its build, and bad arguments."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import cmt_deeplab
from cmt_deeplab.models import model_spec


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
