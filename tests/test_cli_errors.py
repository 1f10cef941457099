"""How the command line reports errors: one line, the traceback only with ``--debug``."""

from __future__ import annotations

import pytest

from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.cli import models


def _boom(args):
    raise RuntimeError("an unexpected state\nsecond line")


def test_an_internal_error_is_one_line_with_a_hint(monkeypatch, capsys):
    monkeypatch.setattr(models, "run", _boom)
    assert cli_main.main(["models"]) == 1
    err = capsys.readouterr().err
    assert err == ("cmt-deeplab models: internal error: RuntimeError: an unexpected state "
                   "(rerun with --debug for the traceback)\n")


@pytest.mark.parametrize("argv", [["--debug", "models"], ["models", "--debug"]])
def test_debug_shows_the_traceback(monkeypatch, argv):
    monkeypatch.setattr(models, "run", _boom)
    with pytest.raises(RuntimeError, match="an unexpected state"):
        cli_main.main(argv)


def test_debug_after_a_nested_subcommand(tmp_path, capsys):
    # `data check --debug` with a missing split: the user error itself raises.
    with pytest.raises(FileNotFoundError):
        cli_main.main(["data", "check", "--data", str(tmp_path), "--split", "x", "--debug"])
    assert cli_main.main(["data", "check", "--data", str(tmp_path), "--split", "x"]) == 2
    assert "cmt-deeplab data check: error: split 'x' not found" in capsys.readouterr().err


@pytest.mark.parametrize("setting, value", [
    ("loss.pq_weight", ".nan"), ("optimizer.weight_decay", ".inf"), ("optimizer.lr", "-.inf"),
    ("optimizer.betas", "[0.9, .nan]"), ("evaluation.class_threshold", ".NaN"),
])
def test_non_finite_float_settings_are_refused_by_name(capsys, setting, value):
    code = cli_main.main(["train", "--config", "synthetic_cmt_deeplab_tiny", "--set",
                          f"{setting}={value}", "--print-config"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "must be a finite number" in err and setting.split(".")[1] in err


@pytest.mark.parametrize("flag", ["--lr", "--time-limit"])
def test_non_finite_float_flags_are_refused(capsys, flag):
    code = cli_main.main(["train", "--config", "synthetic_cmt_deeplab_tiny", flag, "nan",
                          "--print-config"])
    assert code == 2 and "must be a finite number, got nan" in capsys.readouterr().err
