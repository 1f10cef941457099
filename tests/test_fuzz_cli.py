"""The command-line fuzz suite: every case of ``_fuzz_*.py`` through ``cmt-deeplab``.

Each bad input must give a non-zero exit, no traceback, a message naming the file and the
value, and an output folder unchanged; each valid but unusual input must succeed (see
``_fuzz.check_case``). The long tail (subprocesses, real model builds) is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import _fuzz_data  # noqa: F401  (registers its cases)
import _fuzz_models  # noqa: F401
import _fuzz_predict  # noqa: F401
import _fuzz_train  # noqa: F401
from _fuzz import CASES, SLOW_CASES, CachedCheckpoint, build_shared, check_case
from cmt_deeplab.cli import common as cli_common


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return build_shared(tmp_path_factory.mktemp("fuzz_shared"))


@pytest.fixture(scope="module")
def cached_checkpoint(shared) -> CachedCheckpoint:
    return CachedCheckpoint(shared)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: a second thread only waits for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW_CASES else name


@pytest.mark.parametrize("name", [_param(name) for name in CASES])
def test_fuzz_case(name, shared, cached_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_common, "load_model_dir", cached_checkpoint)
    check_case(name, shared, tmp_path, monkeypatch)


def test_the_suite_is_large_enough():
    assert len(CASES) >= 150
