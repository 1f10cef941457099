"""Atomic writes give the file the mode a plain ``open()`` gives under the current umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cmt_deeplab.utils.io import (
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    current_umask,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask


def test_atomic_files_get_the_mode_of_open(tmp_path, umask):
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    expected = _mode(tmp_path / "plain.txt")
    assert expected == 0o666 & ~umask

    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    with atomic_open(tmp_path / "c.bin") as handle:
        handle.write(b"x")
    atomic_write_with(tmp_path / "d.png", lambda tmp: Path(tmp).write_bytes(b"x"))
    for name in ("a.txt", "b.json", "c.bin", "d.png"):
        assert _mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.txt", "b.json", "c.bin", "d.png", "plain.txt"]


def test_a_replaced_file_keeps_its_mode_as_with_open(tmp_path, umask):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    atomic_write_json(target, {"pq": 1.0})
    assert _mode(target) == 0o640
