"""Name and shape mapping on the variable lists of real deeplab2 checkpoints (full MaX-DeepLab-S
and -L, a training checkpoint with optimizer slots, the ImageNet backbones in deeplab2's and TF
Model Garden's layouts): every variable finds its tensor, with the right shape. Models are built
on the meta device, so the full-size ones cost no memory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cmt_deeplab
from cmt_deeplab.convert import ConversionError, TFCheckpoint, convert_state_dict
from cmt_deeplab.convert.converter import plan_conversion

VARIABLES = Path(__file__).resolve().parent / "fixtures" / "deeplab2" / "variables"
INDEX = json.loads((VARIABLES / "index.json").read_text())
SMALL = Path(__file__).resolve().parent / "fixtures" / "deeplab2" / "small"
BOOKKEEPING = {"_CHECKPOINTABLE_OBJECT_GRAPH", "global_step/.ATTRIBUTES/VARIABLE_VALUE",
               "save_counter/.ATTRIBUTES/VARIABLE_VALUE"}


class Shapes(dict):
    """Names and shapes of a checkpoint: enough to plan a conversion."""

    def shape(self, name: str) -> tuple[int, ...]:
        return self[name]


def shapes(name: str) -> Shapes:
    result = Shapes()
    with gzip.open(VARIABLES / f"{name}.tsv.gz", "rt") as handle:
        for line in handle:
            key, shape = line.rstrip("\n").split("\t")
            result[key] = tuple(json.loads(shape))
    return result


def meta_model(name: str, **overrides) -> torch.nn.Module:
    with torch.device("meta"):
        return cmt_deeplab.build_model(name, **overrides)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_every_variable_finds_its_tensor(name):
    entry = INDEX[name]
    source = shapes(name)
    model = meta_model(entry["model"], **entry["overrides"])
    matches, report, missing, mismatched = plan_conversion(source, model, entry["backbone_only"])
    assert not missing and not mismatched
    unused = set(report.unused) - BOOKKEEPING
    if name == "small_with_optimizer":  # Adam slots of both optimizers, their step counters
        assert unused and all(u.startswith(("optimizer/", "backbone_optimizer/"))
                              or "/.OPTIMIZER_SLOT/" in u for u in unused)
    else:
        assert not unused
    if entry["backbone_only"]:
        assert all(r["tensor"].startswith(("backbone.", "fuses.", "backbone_groups."))
                   for r in report.loaded)
        assert report.new  # the decoder, transformers and heads
    else:
        assert not report.new
        assert len(matches) == len(source) - len(BOOKKEEPING & set(source)) - len(unused)


def test_max_s_full_size_counts():
    """The real MaX-DeepLab-S: all 907 variables, 78.0M values (BN statistics and the auxiliary
    semantic branch included)."""
    model = meta_model("max-deeplab-s")
    _, report, _, _ = plan_conversion(shapes("max_s"), model)
    values = sum(int(np.prod(r["shape"])) for r in report.loaded)
    # deeplab2's 77,990,256 less the 134-way semantic classifier's void channel (256 + 1).
    assert len(report.loaded) == 907 and values == 77_990_256 - 257


@pytest.mark.skipif(not (VARIABLES / "max_l.tsv.gz").exists(), reason="no MaX-L variable list")
def test_max_l_full_size_maps_completely():
    model = meta_model("max-deeplab-l")
    _, report, missing, mismatched = plan_conversion(shapes("max_l"), model)
    assert not missing and not mismatched and not report.new
    assert not set(report.unused) - BOOKKEEPING


def test_axial_r50_backbone_into_every_axial_r50_model():
    """The MaX-S ImageNet backbone (Axial-R50) fills the encoders of MaX-S, CMT-S, and the
    stages CMT-L / CMT-L-RFN share with it (stage 4 has 24 blocks there: new)."""
    source = shapes("max_deeplab_s_backbone_deeplab2")
    tiny = {"width_multiplier": 0.0625, "stem_width_multiplier": 0.0625}
    expected = len(source) - 2  # all but the object graph and save_counter
    for name, loaded, stage4_new in [("max-deeplab-s", expected, False),
                                     ("cmt-deeplab-s", expected, False),
                                     ("cmt-deeplab-l", None, True),
                                     ("cmt-deeplab-l-rfn", None, True)]:
        _, report, missing, mismatched = plan_conversion(source, meta_model(name, **tiny), True)
        assert not missing and not mismatched, name
        if loaded is not None:
            assert len(report.loaded) == loaded, name
        stage4 = [r for r in report.new if ".stages.stage4." in r["tensor"]]
        assert bool(stage4) == stage4_new, name
        if stage4_new:
            assert "24 blocks, the checkpoint's 6" in stage4[0]["reason"]
            assert any(".stages.stage5." in r["tensor"] for r in report.loaded)
    # The RFN's two networks both take it.
    _, report, _, _ = plan_conversion(source, meta_model("cmt-deeplab-l-rfn", **tiny), True)
    assert {r["tensor"].split(".")[0] for r in report.loaded} == {"net1", "net2"}


def test_whole_cmt_model_needs_backbone_only():
    with pytest.raises(ValueError, match="--backbone-only"):
        plan_conversion(shapes("max_s"), meta_model("cmt-deeplab-s"))


def test_checkpoint_of_another_model_is_named():
    """The small MaX-S checkpoint into MaX-L (and into MaX-S of other widths)."""
    checkpoint = TFCheckpoint(SMALL / "ckpt-0")
    model = meta_model("max-deeplab-l", num_slots=32, width_multiplier=0.0625,
                       stem_width_multiplier=0.0625, memory_channels=64)
    with pytest.raises(ConversionError, match=r"does not fit max-deeplab-l: .* another model"):
        convert_state_dict(checkpoint, model, checkpoint_name="small")
    meta = json.loads((SMALL / "meta.json").read_text())
    wider = dict(meta["port_config"], pixel_feature_dim=32)
    with pytest.raises(ConversionError, match=r"variable pixel_space_head/final_conv/kernel"
                                              r".* \[1, 1, 256, 16\] does not fit"):
        convert_state_dict(checkpoint, meta_model("max-deeplab-s", **wider))


def test_non_strict_keeps_and_lists_what_does_not_fit():
    """Net surgery: another class count keeps the model's class head and lists it."""
    meta = json.loads((SMALL / "meta.json").read_text())
    model = cmt_deeplab.build_model("max-deeplab-s", **dict(meta["port_config"], num_classes=19,
                                                            num_thing_classes=8))
    before = model.predictor.class_head.weight.detach().clone()
    state, report = convert_state_dict(TFCheckpoint(SMALL / "ckpt-0"), model, strict=False)
    skipped = {r["tensor"] for r in report.skipped}
    assert skipped == {"predictor.class_head.weight", "predictor.class_head.bias",
                       "semantic_head.classifier.weight", "semantic_head.classifier.bias"}
    assert torch.equal(state["predictor.class_head.weight"], before)
    assert "transformer_class_head/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE" in report.unused
    model.load_state_dict(state)
