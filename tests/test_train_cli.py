"""The ``train`` command: dry run, config names and printing, flag precedence, user errors,
and a short real run whose output directory ``predict``'s loader can read."""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import pytest
import yaml

from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.data.synthetic import generate_synthetic_dataset
from cmt_deeplab.model_dir import load_model_dir

TINY = ["--model", "cmt-deeplab-tiny", "--crop", "33", "--batch-size", "2",
        "--set", "model.num_slots=8", "--no-progress"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, "train", num_images=6, size=40, seed=4)
    generate_synthetic_dataset(root, "val", num_images=3, size=40, seed=4)
    return root


def test_dry_run_on_random_data_reports_memory_and_writes_nothing(tmp_path, monkeypatch,
                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["train", *TINY, "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("dry run: cmt-deeplab-tiny on cpu, crop 33x33, 2 image(s) per "
                               "micro-batch x 1: loss ")
    assert "CPU peak RSS increase" in lines[0]
    report = json.loads(lines[1])
    assert report["memory_kind"] == "CPU peak RSS increase"
    assert report["peak_memory_bytes"] >= 0 and report["micro_batch"] == 2
    assert report["crop"] == [33, 33] and report["loss"] > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_dry_run_memory_is_the_steps_own_after_a_larger_earlier_peak(capsys):
    """A process that held 512 MiB before still reports its dry-run step (tens of MiB), not
    the old peak: the peak resident size is reset before the step."""
    held = mmap.mmap(-1, 512 << 20)
    for offset in range(0, len(held), 4096):
        held[offset] = 1  # touch every page: resident
    held.close()
    assert cli_main.main(["train", *TINY, "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[1])
    assert 0 <= report["peak_memory_bytes"] < 256 << 20


def test_dry_run_on_real_data_with_accumulation(data_root, capsys):
    code = cli_main.main(["train", *TINY, "--data", str(data_root), "--train-split", "train",
                          "--num-workers", "0", "--set", "run.accumulate=2", "--dry-run"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[1])
    assert (report["micro_batch"], report["accumulate"]) == (1, 2)


def test_print_config_shows_precedence(capsys):
    code = cli_main.main(["train", "--config", "cityscapes_cmt_deeplab_s", "--steps", "9",
                          "--set", "run.steps=5", "--set", "optimizer.lr=1e-4", "--crop",
                          "65x129", "--print-config"])
    assert code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["run"]["steps"] == 9  # the flag beats --set
    assert config["optimizer"]["lr"] == pytest.approx(1e-4)
    assert config["input"]["crop"] == [65, 129]
    assert config["data"]["train_split"] == "train"  # from the file
    assert config["run"]["time_limit_s"] == 0.0 and config["run"]["fit_time_limit"] is False


def test_time_limit_flags(capsys):
    assert cli_main.main(["train", "--config", "synthetic_cmt_deeplab_tiny", "--time-limit", "90",
                          "--fit-time-limit", "--print-config"]) == 0
    run = yaml.safe_load(capsys.readouterr().out)["run"]
    assert run["time_limit_s"] == 90.0 and run["fit_time_limit"] is True


@pytest.mark.parametrize("argv, message", [
    (["--set", "optimizer.lrr=1", "--out", "x"], "unknown config key 'optimizer.lrr'"),
    (["--config", "no_such_config", "--out", "x"], "config not found: no_such_config"),
    (["--steps", "5"], "--out DIR is required"),
    (["--out", "x"], "no training data"),
])
def test_user_errors_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main.main(["train", *TINY, *argv]) == 2
    assert message in capsys.readouterr().err


def test_short_run_writes_a_loadable_model_dir_and_eval(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main.main(["train", *TINY, "--data", str(data_root), "--train-split", "train",
                          "--val-split", "val", "--steps", "2", "--save-every", "1",
                          "--eval-every", "2", "--num-workers", "0", "--out", str(out),
                          "--set", "run.keep_last=1"])
    assert code == 0
    assert "PQ" in capsys.readouterr().out
    model, config = load_model_dir(out)
    assert config["model"]["name"] == "cmt-deeplab-tiny"
    assert config["model"]["build_kwargs"] == {"num_classes": 8, "num_thing_classes": 4,
                                               "num_slots": 8}
    assert [c["id"] for c in config["data"]["categories"]] == [1, 2, 3, 4, 11, 12, 13, 14]
    # The tiny recipe (--model's default config) evaluates its 96 px images whole.
    assert config["input"] == {"crop": [33, 33], "eval_size": [96, 96]}
    assert config["train"]["run"]["steps"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002"]
    history = json.loads((out / "eval.json").read_text())
    assert [entry["step"] for entry in history] == [2]
    assert history[0]["num_images"] == 3 and 0 <= history[0]["pq"] <= 100
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    assert yaml.safe_load((out / "train_config.yaml").read_text())["run"]["batch_size"] == 2

    # A longer run resumes from the final state, with a warning naming what changed.
    with pytest.warns(UserWarning, match=r"changed settings: run\.steps"):
        code = cli_main.main(["train", *TINY, "--data", str(data_root), "--train-split",
                              "train", "--val-split", "val", "--steps", "3", "--save-every",
                              "1", "--eval-every", "2", "--num-workers", "0", "--out",
                              str(out), "--set", "run.keep_last=1", "--resume"])
    assert code == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003"]
    assert [e["step"] for e in json.loads((out / "eval.json").read_text())] == [2, 3]
    assert load_model_dir(out)[1]["step"] == 3
