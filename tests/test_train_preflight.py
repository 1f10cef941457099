"""Before a run starts: the model's own recipe, a memory estimate that refuses settings the
machine cannot hold, and a warning for a run that ends inside its warm-up."""

from __future__ import annotations

import warnings

import pytest
import torch

from cmt_deeplab import build_model
from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.cli.main import build_parser
from cmt_deeplab.cli.train import build_config
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.engine import preflight
from cmt_deeplab.engine.config import MODEL_RECIPES, load_train_config
from cmt_deeplab.models import list_models


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, "train", num_images=4, size=40, seed=4)
    return root


def _config(*argv: str):
    return build_config(build_parser().parse_args(["train", *argv]))


def test_every_model_has_a_recipe():
    assert set(MODEL_RECIPES) == set(list_models())


def test_a_model_name_brings_its_recipe_and_the_user_keeps_the_data(data_root):
    tiny = _config("--model", "cmt-deeplab-tiny", "--data", str(data_root),
                   "--train-split", "train")
    preset = load_train_config("synthetic_cmt_deeplab_tiny")
    assert tiny.input.crop == preset.input.crop == [96, 96]
    assert (tiny.run.steps, tiny.run.batch_size, tiny.optimizer.lr) == (
        preset.run.steps, preset.run.batch_size, preset.optimizer.lr)
    assert tiny.data.train_split == "train" and tiny.data.val_split is None  # not the preset's
    max_s = _config("--model", "max-deeplab-s")
    assert max_s.to_dict() | {"data": None} == load_train_config("coco_max_deeplab_s").to_dict() \
        | {"data": None}
    assert max_s.init.checkpoint == "max_deeplab_s_backbone_imagenet1k"  # the paper's start
    # MaX-S's ImageNet backbone does not fit MaX-L: its own does.
    assert _config("--model", "max-deeplab-l").init.checkpoint == \
        "max_deeplab_l_backbone_imagenet1k"
    assert _config("--model", "max-deeplab-tiny").init.checkpoint is None
    baseline = _config("--model", "max-deeplab-tiny")
    assert baseline.model.name == "max-deeplab-tiny" and baseline.input.crop == [96, 96]
    assert _config().model.name == "cmt-deeplab-s"
    # --config still wins over the model's recipe; the flag sets the model.
    chosen = _config("--config", "coco_cmt_deeplab_s", "--model", "cmt-deeplab-tiny")
    assert chosen.model.name == "cmt-deeplab-tiny" and chosen.input.crop == [1025, 1025]


def test_train_says_which_config_it_used(capsys):
    assert cli_main.main(["train", "--model", "cmt-deeplab-tiny", "--print-config"]) == 0
    assert cli_main.main(["train", "--model", "cmt-deeplab-tiny", "--crop", "33",
                          "--batch-size", "1", "--set", "model.num_slots=8", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("config synthetic_cmt_deeplab_tiny (the recipe of --model "
                     "cmt-deeplab-tiny") == 1  # the dry run's, not --print-config's
    assert "warm-up" not in err  # a dry run has no schedule to finish


def test_meta_count_of_saved_activations_equals_a_real_forward():
    config = load_train_config("synthetic_cmt_deeplab_tiny", ["input.crop=33",
                                                              "model.num_slots=8"])
    counted, parameters = preflight.saved_activation_bytes(config, 2, 9, 5)
    torch.manual_seed(0)
    model = build_model("cmt-deeplab-tiny", num_classes=9, num_thing_classes=5,
                        num_slots=8).train().to(memory_format=torch.channels_last)
    weights = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())}
    storages, kept = {}, []

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in weights:
            storages[storage._cdata] = storage.nbytes()
            kept.append(tensor)
        return tensor

    images = torch.randn(2, 3, 33, 33).contiguous(memory_format=torch.channels_last)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model(images)
    real = sum(storages.values())
    # Within 2%: an op or two lays out its saved tensor differently on meta (one 41 KB
    # storage of 4.1 MB here).
    assert real > 0 and abs(counted - real) <= 0.02 * real
    del outputs
    assert parameters == sum(p.numel() for p in model.parameters())
    double, _ = preflight.saved_activation_bytes(config, 4, 9, 5)
    assert 1.9 * counted < double < 2.1 * counted


def test_settings_that_cannot_fit_stop_before_anything_is_loaded(data_root, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setattr(preflight, "available_host_memory", lambda: 16 << 30)
    out = tmp_path / "run"
    code = cli_main.main(["train", "--model", "cmt-deeplab-tiny", "--data", str(data_root),
                          "--train-split", "train", "--crop", "1025", "--batch-size", "64",
                          "--num-workers", "4", "--steps", "30", "--out", str(out),
                          "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cmt-deeplab train: error: cmt-deeplab-tiny at batch 64" in err
    assert "crop 1025x1025, 4 data workers needs at least" in err
    assert "16.0 GiB available" in err and "--no-memory-check" in err
    assert not out.exists()


def test_the_estimate_adds_up_its_parts(monkeypatch):
    monkeypatch.setattr(preflight, "available_host_memory", lambda: 1 << 40)
    config = load_train_config("synthetic_cmt_deeplab_tiny", ["run.num_workers=2"])
    estimate = preflight.estimate_memory(config, torch.device("cpu"), 8, 9, 5, processes=2)
    assert estimate.data == (2 * 2 + 1) * 8 * 96 * 96 * 39
    assert estimate.host_total == 2 * (estimate.weights + estimate.activations + estimate.data)
    assert estimate.problem() is None
    tight = preflight.MemoryEstimate(**{**estimate.__dict__, "host_available": 1 << 20})
    assert "this machine has 1.0 MiB available" in tight.problem()


def test_a_run_shorter_than_its_warmup_is_warned_about():
    short = load_train_config("synthetic_cmt_deeplab_tiny", ["run.steps=30"])
    message = preflight.warmup_problem(short)
    assert "run.steps=30 ends inside the warm-up (schedule.warmup_steps=100)" in message
    assert "at most 0.00087 of optimizer.lr=0.003" in message  # 29/100 x 3e-3
    assert preflight.warmup_problem(load_train_config("synthetic_cmt_deeplab_tiny")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight.preflight(load_train_config("synthetic_cmt_deeplab_tiny"),
                            torch.device("cpu"), 1, 9, 5, check_memory=False)
    with pytest.warns(UserWarning, match="ends inside the warm-up"):
        preflight.preflight(short, torch.device("cpu"), 1, 9, 5, check_memory=False)
