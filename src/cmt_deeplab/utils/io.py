"""Atomic file writes: a reader never sees a half-written file.

Everything the library writes (checkpoints, PNGs, JSON, reports) goes through here:
write to a temporary file in the same directory, fsync, then ``os.replace``. The file gets the
mode a plain ``open()`` would give it (0644 under umask 022), not ``mkstemp``'s private 0600.
``read_json`` reads a JSON file with errors that name it.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Opens a temporary sibling of ``path``; renames it onto ``path`` on success only."""
    with _temporary_sibling(path) as tmp, open(tmp, mode) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_with(path: str | Path, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` for libraries that want a file name, then renames."""
    with _temporary_sibling(path, suffix=Path(path).suffix or ".tmp") as tmp:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


@contextlib.contextmanager
def _temporary_sibling(path: str | Path, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary file beside ``path`` that replaces ``path`` when the block succeeds and
    is removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        # mkstemp creates 0600 whatever the umask: readers (a web server, a colleague) expect
        # the mode open() gives.
        os.fchmod(fd, open_mode(path))
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str | Path, what: str, unreadable: str = "cannot read") -> Any:
    """The JSON document at ``path``; a missing or unreadable file is an error naming ``what``
    and the file (``FileNotFoundError`` / ``ValueError``)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{unreadable} {what} {path}: {error}") from None


def open_mode(path: Path) -> int:
    """The permission bits ``open(path, "w")`` leaves ``path`` with: an existing file keeps
    its own, a new one gets 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask. Read from /proc where it exists: setting and restoring it (the
    only portable way) briefly changes it for every thread."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def fsync_directory(directory: Path) -> None:
    """Makes a rename inside ``directory`` durable (best effort: not every OS allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` as an output directory: it and its parents must be directories if they exist.

    Raises ``ValueError`` naming ``what`` (e.g. the flag) and the path before anything is
    written, rather than an OS error half-way through a run.
    """
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            break
        if candidate.exists() or candidate.is_symlink():
            if candidate == path:
                raise ValueError(f"{what} {path} exists and is not a directory")
            raise ValueError(f"{what} {path} cannot be created: {candidate} is not a directory")
    return path
