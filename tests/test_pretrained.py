"""Pretrained starts (``cmt_deeplab.pretrained``): whole model, net surgery for a new class
set, backbone only (a recursive network's two encoders included), deeplab2 checkpoints and
published names, the strict rules and their errors, and ``build_model(pretrained=)``."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests._small_models import small_model

import cmt_deeplab
from cmt_deeplab.convert import archives
from cmt_deeplab.model_dir import save_model_dir
from cmt_deeplab.pretrained import class_dependent_tensors, load_pretrained

SMALL_TF = Path(__file__).resolve().parent / "fixtures" / "deeplab2" / "small"
#: A cmt-deeplab-tiny whose encoder has the small deeplab2 checkpoint's shapes.
TF_ENCODER = {"width_multiplier": 0.0625, "stem_width_multiplier": 0.0625,
              "backbone_num_blocks": (1, 2, 3, 1), "axial_num_heads": 8}


def _tiny(num_classes: int = 7, seed: int = 0, num_slots: int = 8, **overrides):
    torch.manual_seed(seed)
    return cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=num_classes,
                                   num_thing_classes=3, num_slots=num_slots, **overrides)


def _model_dir(tmp_path: Path, model, name: str = "source") -> Path:
    from cmt_deeplab.data.metadata import Category, DatasetInfo

    classes = cmt_deeplab.models.model_spec(model).kwargs["num_classes"]
    info = DatasetInfo([Category(i + 1, f"c{i}", i < 3) for i in range(classes)])
    return save_model_dir(tmp_path / name, model, {"data": info})


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a, b))


def test_whole_model_start_copies_every_tensor(tmp_path):
    source = _tiny(seed=1)
    target = _tiny(seed=2)
    report = load_pretrained(target, _model_dir(tmp_path, source))
    assert not report.new and not report.skipped and not report.unused
    assert len(report.loaded) == len(target.state_dict())
    for key, value in source.state_dict().items():
        assert _equal(target.state_dict()[key], value), key
    assert "total" in report.table(target)


def test_new_class_set_rebuilds_the_class_heads_and_keeps_the_rest(tmp_path):
    source = _tiny(num_classes=7, seed=1)
    fresh = _tiny(num_classes=4, seed=2)
    target = _tiny(num_classes=4, seed=2)
    report = load_pretrained(target, _model_dir(tmp_path, source))
    class_sized = class_dependent_tensors(target)
    assert set(report.new) == class_sized
    assert {name.rsplit(".", 2)[-2] for name in class_sized} == {"class_head", "classifier"}
    assert all(reason.startswith("class set differs") for reason in report.new.values())
    state = target.state_dict()
    for key in class_sized:  # the fresh initialisation, untouched
        assert _equal(state[key], fresh.state_dict()[key]), key
    for key in report.loaded:
        assert _equal(state[key], source.state_dict()[key]), key
    # The class head is a new layer, everything else computes what the source computes.
    images = torch.rand(1, 3, 33, 33)
    with torch.no_grad():
        ours, theirs = target.eval()(images), source.eval()(images)
    assert torch.allclose(ours["pred_masks"], theirs["pred_masks"])
    assert ours["pred_logits"].shape[-1] == 5 and theirs["pred_logits"].shape[-1] == 8


def test_backbone_only_takes_the_encoder_and_leaves_the_rest_fresh(tmp_path):
    source = _tiny(seed=1)
    fresh = _tiny(num_classes=4, seed=2)
    target = _tiny(num_classes=4, seed=2)
    report = load_pretrained(target, _model_dir(tmp_path, source), backbone_only=True)
    assert report.loaded and all(name.startswith("backbone.") for name in report.loaded)
    assert not any(name.startswith("backbone.") for name in report.new)
    assert len(report.loaded) == sum(k.startswith("backbone.") for k in target.state_dict())
    for key, value in target.state_dict().items():
        expected = source if key.startswith("backbone.") else fresh
        assert _equal(value, expected.state_dict()[key]), key
    assert not any(name.startswith("backbone.") for name in report.unused)


def test_backbone_only_fills_both_encoders_of_a_recursive_network(tmp_path):
    source = small_model("cmt-deeplab-l")
    target = small_model("cmt-deeplab-l-rfn")
    report = load_pretrained(target, _model_dir(tmp_path, source), backbone_only=True)
    for net in ("net1", "net2"):
        names = [k for k in target.state_dict() if k.startswith(f"{net}.backbone.")]
        assert names and all(report.loaded[k] == k[len(net) + 1:] for k in names)
        assert _equal(target.state_dict()[names[0]], source.state_dict()[names[0][5:]])


def test_a_deeper_encoder_lists_the_blocks_the_source_lacks_as_new(tmp_path):
    source = _tiny(seed=1, backbone_num_blocks=(1, 1, 1, 1))
    target = _tiny(seed=2, backbone_num_blocks=(1, 1, 2, 1))
    report = load_pretrained(target, _model_dir(tmp_path, source), backbone_only=True)
    lacking = {k for k, why in report.new.items() if why == "the source's encoder lacks it"}
    assert lacking and all(k.startswith("backbone.") for k in lacking)
    # Whole-model and strict, the same source is refused with the tensors named.
    with pytest.raises(ValueError, match=r"does not fit cmt-deeplab-tiny: .* missing in the "):
        load_pretrained(_tiny(seed=2, backbone_num_blocks=(1, 1, 2, 1)),
                        _model_dir(tmp_path, source, "again"))


def test_a_checkpoint_of_another_model_is_refused_or_skipped(tmp_path):
    source = _model_dir(tmp_path, small_model("max-deeplab-s"))
    target = _tiny(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"source does not fit cmt-deeplab-tiny: .*checkpoint of "
                                         "another model"):
        load_pretrained(target, source)
    assert all(_equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded
    # Another encoder family: the tensors of its name but other shapes are named.
    with pytest.raises(ValueError, match=r"r50 does not fit cmt-deeplab-tiny: .* source "
                                         r"\(16, 16, 1, 1\) vs model \(16, 32, 1, 1\).*another "
                                         "architecture"):
        load_pretrained(target, _model_dir(tmp_path, small_model("cmt-deeplab-r50"), "r50"),
                        backbone_only=True)
    nothing = tmp_path / "heads.safetensors"
    save_file({"predictor.class_head.weight": torch.zeros(3, 3)}, nothing)
    with pytest.raises(ValueError, match="heads.safetensors: no tensor fits cmt-deeplab-tiny"):
        load_pretrained(target, nothing, backbone_only=True, strict=False)


def test_non_strict_skips_and_lists_what_does_not_fit(tmp_path):
    source = _tiny(seed=1)
    target = _tiny(seed=2, num_slots=9)  # another slot table
    with pytest.raises(ValueError, match=r"centers.weight: source \(8, .*\) vs model \(9, "):
        load_pretrained(target, _model_dir(tmp_path, source))
    report = load_pretrained(target, tmp_path / "source", strict=False)
    assert report.skipped == {"centers.weight": "source (8, 128) vs model (9, 128)"}
    assert "centers.weight" not in report.loaded and report.unused == ["centers.weight"]


def test_bad_sources_are_named(tmp_path):
    model = _tiny()
    with pytest.raises(FileNotFoundError, match="pretrained source not found: .*nowhere"):
        load_pretrained(model, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty is neither a model directory"):
        load_pretrained(model, tmp_path / "empty")
    directory = _model_dir(tmp_path, model)
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # a NaN: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="weights file .*model.safetensors: its SHA-256 is"):
        load_pretrained(model, directory)
    weights.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="corrupt or truncated weights file .*model.safetensors"):
        load_pretrained(model, directory)


def test_safetensors_file_and_build_model_pretrained(tmp_path):
    source = _tiny(seed=1)
    directory = _model_dir(tmp_path, source)
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=7, num_thing_classes=3,
                                    num_slots=8, pretrained=directory / "model.safetensors")
    assert all(_equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    # ``pretrained`` is not a build argument: a rebuilt model does not reload it.
    assert "pretrained" not in cmt_deeplab.models.model_spec(model).kwargs


def test_deeplab2_checkpoint_backbone_into_a_cmt_model():
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=5, num_thing_classes=2,
                                    pretrained=SMALL_TF, pretrained_backbone_only=True,
                                    **TF_ENCODER)
    fresh_like = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=5, num_thing_classes=2,
                                         **TF_ENCODER)
    report = load_pretrained(fresh_like, SMALL_TF, backbone_only=True)
    # The converter's own count of the small checkpoint's encoder variables (test_convert_cli),
    # plus our BN update counters, which deeplab2 has no variable for and stay new.
    assert len([k for k in report.loaded if not k.endswith("num_batches_tracked")]) == 221
    assert all(k.startswith("backbone.") for k in report.loaded)
    for key in report.loaded:
        assert _equal(model.state_dict()[key], fresh_like.state_dict()[key]), key


def test_published_backbone_name_is_fetched_converted_and_taken_as_a_backbone(
        tmp_path, monkeypatch):
    name = "max_deeplab_s_backbone_imagenet1k"
    folder = tmp_path / "pack" / name
    folder.mkdir(parents=True)
    for path in SMALL_TF.glob("ckpt-0.*"):
        shutil.copyfile(path, folder / path.name)
    packed = tmp_path / f"{name}.tar.gz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(folder, arcname=name)
    entry = archives.ARCHIVES[name]
    monkeypatch.setitem(archives.ARCHIVES, name, archives.Archive(
        packed.as_uri(), entry.model, True, entry.crop, entry.note))
    monkeypatch.setenv("CMT_DEEPLAB_CACHE", str(tmp_path / "cache"))
    model = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=5, num_thing_classes=2,
                                    **TF_ENCODER)
    report = load_pretrained(model, name)  # backbone only by default for a backbone archive
    assert report.backbone_only and report.source == name and len(report.loaded) >= 221
    with pytest.raises(ValueError, match="is an ImageNet backbone"):
        load_pretrained(model, name, backbone_only=False)


def test_converted_model_directory_keeps_its_new_tensors_new(tmp_path):
    from cmt_deeplab.convert import convert_deeplab2

    out = tmp_path / "converted"
    convert_deeplab2(SMALL_TF, "cmt-deeplab-tiny", out, num_classes=5, num_thing_classes=2,
                     backbone_only=True, overrides=dict(TF_ENCODER))
    lacking = {r["tensor"] for r in json.loads((out / "conversion.json").read_text())["new"]}
    target = cmt_deeplab.build_model("cmt-deeplab-tiny", num_classes=5, num_thing_classes=2,
                                     **TF_ENCODER)
    report = load_pretrained(target, out, backbone_only=True)
    assert not lacking & set(report.loaded)  # random values of the conversion are not "pretrained"
