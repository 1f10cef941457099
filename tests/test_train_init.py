"""``train --init-from``: a pretrained start on another class set (net surgery), backbone only,
the printed table and ``pretrained.json``, the backbone multiplier on the pretrained tensors
only, a resumed run that keeps them, ``--init-from none``, and the shipped paper configs'
ImageNet starts."""

from __future__ import annotations

import json

import pytest
import torch

from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.convert.archives import ARCHIVES
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine.config import list_shipped_configs, load_train_config
from cmt_deeplab.model_dir import load_model_dir
from cmt_deeplab.models import build_model

TINY = ["--model", "cmt-deeplab-tiny", "--crop", "33", "--batch-size", "2", "--num-workers",
        "0", "--set", "model.num_slots=8", "--no-progress", "--set", "optimizer.lr=1e-3",
        "--set", "optimizer.backbone_lr_multiplier=0.1", "--set", "schedule.warmup_steps=0"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny model trained two steps on the 8-class synthetic set."""
    root = tmp_path_factory.mktemp("pretrain")
    generate_synthetic_dataset(root / "data", "train", num_images=4, size=40, seed=1)
    out = root / "run"
    assert cli_main.main(["train", *TINY, "--data", str(root / "data"), "--train-split",
                          "train", "--steps", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def other_classes(tmp_path_factory):
    """A synthetic set with another class list (5 classes instead of 8)."""
    root = tmp_path_factory.mktemp("finetune")
    generate_synthetic_dataset(root, "train", num_images=4, size=40, seed=2,
                               categories=["circle", "star", "stripes", "noise", "gradient"])
    return root


def _train(data, out, *extra):
    return cli_main.main(["train", *TINY, "--data", str(data), "--train-split", "train",
                          "--out", str(out), *extra])


def test_whole_model_start_on_a_new_class_set(source_run, other_classes, tmp_path, capsys):
    out = tmp_path / "ft"
    capsys.readouterr()
    assert _train(other_classes, out, "--steps", "1", "--init-from", str(source_run)) == 0
    printed = capsys.readouterr().out
    assert f"pretrained start from {source_run}" in printed and "class set differs" in printed
    record = json.loads((out / "pretrained.json").read_text())
    assert record["counts"]["new"] == len(record["new"]) > 0
    assert all("class_head" in name or "classifier" in name for name in record["new"])
    model, config = load_model_dir(out)
    assert model.predictor.class_head.out_features == 6  # 5 classes + void
    assert config["train"]["init"] == {"checkpoint": str(source_run), "backbone_only": False,
                                       "strict": True}


def test_backbone_only_start_slows_the_pretrained_encoder_and_resumes(
        source_run, other_classes, tmp_path):
    out = tmp_path / "ft"
    assert _train(other_classes, out, "--steps", "1", "--init-from", str(source_run),
                  "--backbone-only", "--save-every", "1") == 0
    record = json.loads((out / "pretrained.json").read_text())
    assert record["backbone_only"] and all(k.startswith("backbone.") for k in record["loaded"])
    from cmt_deeplab.engine.trainer import Trainer

    config = load_train_config("synthetic_cmt_deeplab_tiny", values={
        "model.name": "cmt-deeplab-tiny", "model.num_slots": 8, "input.crop": [33, 33],
        "run.batch_size": 2, "run.num_workers": 0, "run.steps": 2, "optimizer.lr": 1e-3,
        "optimizer.backbone_lr_multiplier": 0.1, "schedule.warmup_steps": 0,
        "data.root": str(other_classes), "data.train_split": "train", "data.val_split": None,
        "init.checkpoint": str(source_run), "init.backbone_only": True})
    resumed = Trainer(config, out, resume=True, progress=False)
    try:
        groups = {g["name"]: g for g in resumed.optimizer.param_groups}
        assert groups["pretrained_backbone_decay"]["initial_lr"] == pytest.approx(1e-4)
        assert groups["head_decay"]["initial_lr"] == pytest.approx(1e-3)
        names = {id(p): n for n, p in resumed.model.named_parameters()}
        slowed = {names[id(p)] for key in ("pretrained_backbone_decay",
                                           "pretrained_backbone_no_decay")
                  for p in groups[key]["params"]}
        parameters = dict(resumed.model.named_parameters())
        assert slowed == {name for name in record["loaded"] if name in parameters}
        with pytest.warns(UserWarning, match="changed settings"):  # run.steps 1 -> 2
            resumed.train()
    finally:
        resumed.close()
    assert load_model_dir(out)[1]["step"] == 2


def test_init_from_none_trains_from_scratch_and_bad_sources_exit_2(other_classes, tmp_path,
                                                                    capsys):
    config = load_train_config("coco_cmt_deeplab_s", values={"init.checkpoint": None})
    assert config.init.checkpoint is None
    assert cli_main.main(["train", "--config", "coco_cmt_deeplab_s", "--init-from", "none",
                          "--print-config"]) == 0
    assert "checkpoint: null" in capsys.readouterr().out
    code = _train(other_classes, tmp_path / "bad", "--steps", "1", "--init-from",
                  str(tmp_path / "missing"))
    assert code == 2
    assert f"pretrained source not found: {tmp_path / 'missing'}" in capsys.readouterr().err


def test_a_published_start_that_cannot_be_fetched_says_how_to_train_without(
        other_classes, tmp_path, monkeypatch, capsys):
    from cmt_deeplab.convert import archives

    name = "max_deeplab_s_backbone_imagenet1k"
    entry = archives.ARCHIVES[name]
    monkeypatch.setitem(archives.ARCHIVES, name, archives.Archive(
        (tmp_path / "offline.tar.gz").as_uri(), entry.model, True, entry.crop, entry.note))
    monkeypatch.setenv("CMT_DEEPLAB_CACHE", str(tmp_path / "cache"))
    assert _train(other_classes, tmp_path / "run", "--steps", "1", "--init-from", name) == 2
    err = capsys.readouterr().err
    assert f"cannot download {name} from file://" in err
    assert "--init-from none trains from scratch" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("name", [n for n in list_shipped_configs()
                                  if n.startswith(("coco_", "cityscapes_"))])
def test_paper_configs_start_from_a_published_imagenet_backbone_that_fits(name):
    config = load_train_config(name)
    archive = ARCHIVES[config.init.checkpoint]
    assert archive.backbone_only and config.init.backbone_only
    # The archive's own model and ours share the Axial-R50 encoder's first stages.
    with torch.device("meta"):
        ours = build_model(config.model.name).state_dict()
        theirs = build_model(archive.model).state_dict()
    stem = [k for k in theirs if k.startswith("backbone.stem.")]
    assert stem and all(f"net1.{k}" in ours or k in ours for k in stem)
