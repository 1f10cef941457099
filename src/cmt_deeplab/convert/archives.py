"""Where deeplab2's published checkpoints live, and turning any checkpoint argument into a
checkpoint prefix: a prefix, the folder holding one, a ``.tar.gz`` archive, or a name from
:data:`ARCHIVES` (downloaded once into the cache).

Sources: deeplab2's ``g3doc/projects/max_deeplab.md`` (COCO panoptic models) and
``g3doc/projects/imagenet_pretrained_checkpoints.md`` (ImageNet backbones).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cmt_deeplab.utils.io import current_umask

_BASE = "https://storage.googleapis.com/gresearch/tf-deeplab/checkpoint/"


@dataclass(frozen=True)
class Archive:
    """One published checkpoint: what it holds and which of our models takes it."""

    url: str
    model: str
    backbone_only: bool
    crop: int
    note: str


def _coco(name: str, model: str, crop: int, pq: float) -> Archive:
    return Archive(f"{_BASE}{name}_coco_train.tar.gz", model, False, crop,
                   f"COCO panoptic, PQ {pq} (deeplab2's table)")


def _imagenet(name: str, model: str, note: str) -> Archive:
    return Archive(f"{_BASE}{name}.tar.gz", model, True, 641, f"ImageNet-1K backbone: {note}")


#: name -> archive. Full models convert with ``--model`` = ``Archive.model``; backbones go into
#: any model with that backbone (``--backbone-only``).
ARCHIVES: dict[str, Archive] = {
    "max_deeplab_s_os16_res641_100k": _coco("max_deeplab_s_os16_res641_100k", "max-deeplab-s", 641, 45.9),
    "max_deeplab_s_os16_res641_200k": _coco("max_deeplab_s_os16_res641_200k", "max-deeplab-s", 641, 46.5),
    "max_deeplab_s_os16_res641_400k": _coco("max_deeplab_s_os16_res641_400k", "max-deeplab-s", 641, 47.0),
    "max_deeplab_s_os16_res1025_100k": _coco("max_deeplab_s_os16_res1025_100k", "max-deeplab-s", 1025, 47.9),
    "max_deeplab_s_os16_res1025_200k": _coco("max_deeplab_s_os16_res1025_200k", "max-deeplab-s", 1025, 48.7),
    "max_deeplab_s_os16_res1025_400k": _coco("max_deeplab_s_os16_res1025_400k", "max-deeplab-s", 1025, 49.0),
    "max_deeplab_l_os16_res1025_100k": _coco("max_deeplab_l_os16_res1025_100k", "max-deeplab-l", 1025, 50.9),
    "max_deeplab_l_os16_res1025_200k": _coco("max_deeplab_l_os16_res1025_200k", "max-deeplab-l", 1025, 51.1),
    "max_deeplab_l_os16_res1025_400k": _coco("max_deeplab_l_os16_res1025_400k", "max-deeplab-l", 1025, 51.3),
    "max_deeplab_s_backbone_imagenet1k": _imagenet(
        "max_deeplab_s_backbone_imagenet1k_strong_training_strategy", "max-deeplab-s",
        "MaX-DeepLab-S backbone = Axial-R50 (max-deeplab-s, cmt-deeplab-s, cmt-deeplab-l[-rfn])"),
    "max_deeplab_l_backbone_imagenet1k": _imagenet(
        "max_deeplab_l_backbone_imagenet1k_strong_training_strategy", "max-deeplab-l",
        "MaX-DeepLab-L backbone (max-deeplab-l)"),
    "resnet50_imagenet1k": _imagenet(
        "resnet50_imagenet1k_strong_training_strategy", "cmt-deeplab-r50",
        "ResNet-50, strong training strategy (cmt-deeplab-r50)"),
    "resnet50_imagenet1k_simple": _imagenet(
        "resnet50_imagenet1k", "cmt-deeplab-r50", "ResNet-50, simple training strategy"),
}

_PREFIX = re.compile(r"^(?P<prefix>.+)\.index$")


def cache_dir() -> Path:
    """``$CMT_DEEPLAB_CACHE`` or ``$XDG_CACHE_HOME/cmt-deeplab`` (``~/.cache/cmt-deeplab``)."""
    if os.environ.get("CMT_DEEPLAB_CACHE"):
        return Path(os.environ["CMT_DEEPLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cmt-deeplab"


def resolve_checkpoint(
    spec: str | Path, cache: Path | None = None, url: str | None = None,
) -> tuple[Path, Archive | None]:
    """The checkpoint prefix that ``spec`` names, fetching and unpacking as needed.

    Args:
        spec: a prefix (``.../ckpt-400000``), a folder holding one checkpoint, a ``.tar.gz`` of
            one, or a name from :data:`ARCHIVES`.
        cache: where archives are downloaded and unpacked (default :func:`cache_dir`).
        url: download a name from here instead of its table URL (a mirror or ``file://``).

    Returns:
        ``(prefix, archive entry or None)``.

    Raises:
        FileNotFoundError / ValueError: naming the path, archive or name.
    """
    text = str(spec)
    if text in ARCHIVES:
        archive = ARCHIVES[text]
        return _cached(text, url or archive.url, cache or cache_dir()), archive
    path = Path(text).expanduser()
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        target = (cache or cache_dir()) / "unpacked" / _archive_stem(path.name)
        return _unpack(path, target), None
    if path.is_dir():
        return _prefix_in(path), None
    match = _PREFIX.match(text)
    if match and path.is_file():
        return Path(match.group("prefix")), None
    if Path(f"{text}.index").is_file():
        return path, None
    if path.exists():
        raise ValueError(f"{path} is not a TF checkpoint prefix, folder or .tar.gz archive")
    names = ", ".join(ARCHIVES)
    raise FileNotFoundError(
        f"checkpoint not found: {text} (neither a path nor a published name; names: {names})"
    )


def _archive_stem(name: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _prefix_in(folder: Path) -> Path:
    """The checkpoint in ``folder`` (or one level below): the one named by TF's ``checkpoint``
    file, else the only ``*.index``; several without a ``checkpoint`` file is an error."""
    for directory in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        state = directory / "checkpoint"
        if state.is_file():
            match = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(), re.M)
            if match:
                prefix = Path(match.group(1))
                prefix = prefix if prefix.is_absolute() else directory / prefix
                if Path(f"{prefix}.index").is_file():
                    return prefix
        indexes = sorted(directory.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        if len(indexes) > 1:
            listed = ", ".join(p.name for p in indexes)
            raise ValueError(f"{directory} holds several checkpoints ({listed}): pass one prefix")
    raise FileNotFoundError(f"no TF checkpoint (*.index) in {folder}")


def _cached(name: str, url: str, cache: Path) -> Path:
    """Downloads ``url`` into ``cache/archives`` once, unpacks it into ``cache/unpacked/name``."""
    target = cache / "unpacked" / name
    if target.is_dir():
        return _prefix_in(target)
    archive = cache / "archives" / f"{name}.tar.gz"
    if not archive.is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", dir=archive.parent)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 is not open()'s mode
        try:
            with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url, timeout=60) as reply:
                shutil.copyfileobj(reply, handle, length=1 << 20)
            os.replace(tmp, archive)
        except (urllib.error.URLError, OSError) as error:
            Path(tmp).unlink(missing_ok=True)
            raise ValueError(f"cannot download {name} from {url}: {error}") from None
    return _unpack(archive, target)


def _extract(tar: tarfile.TarFile, destination: Path) -> None:
    """``extractall`` refusing links, devices and paths that leave ``destination``."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        tar.extractall(destination, filter="data")
        return
    root = destination.resolve()
    for member in tar.getmembers():
        path = (destination / member.name).resolve()
        if not (member.isfile() or member.isdir()) or root not in (path, *path.parents):
            raise tarfile.TarError(f"refusing archive member {member.name!r}")
    tar.extractall(destination)


def _unpack(archive: Path, target: Path) -> Path:
    """Unpacks into a temporary sibling, renamed to ``target`` when complete."""
    if target.is_dir():
        return _prefix_in(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 is not mkdir's mode
    try:
        with tarfile.open(archive) as tar:
            _extract(tar, tmp)
        prefix = _prefix_in(tmp)
        os.replace(tmp, target)
    except (tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"cannot unpack {archive} (truncated or not a tar archive): {error}") \
            from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target / prefix.relative_to(tmp)
