"""``cmt-deeplab convert deeplab2`` end to end: checkpoint arguments (prefix, folder, .tar.gz,
published name fetched from a ``file://`` URL into the cache), the model directory it writes
(read by ``load_model`` and ``predict``), ``conversion.json``, and the errors."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import cmt_deeplab
from cmt_deeplab.cli import main as cli_main
from cmt_deeplab.convert import TFCheckpoint, convert_deeplab2, resolve_checkpoint

SMALL = Path(__file__).resolve().parent / "fixtures" / "deeplab2" / "small"
META = json.loads((SMALL / "meta.json").read_text())
#: ``--set`` arguments for the small network's widths.
SETTINGS = [f"{key}={json.dumps(value)}" for key, value in META["port_config"].items()
            if key not in ("num_classes", "num_slots", "max_num_slots")]
NAME = "max_deeplab_s_os16_res641_400k"


def cli(*argv: str) -> int:
    return cli_main.main(["convert", "deeplab2", *argv])


def settings() -> list[str]:
    return [arg for item in SETTINGS for arg in ("--set", item)]


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    """The small checkpoint packed as deeplab2 publishes them: a folder in a .tar.gz."""
    folder = tmp_path / "pack" / NAME
    folder.mkdir(parents=True)
    for path in SMALL.glob("ckpt-0.*"):
        shutil.copyfile(path, folder / path.name)
    (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-0"\n')
    path = tmp_path / f"{NAME}_coco_train.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=NAME)
    return path


def test_checkpoint_arguments_resolve_to_the_prefix(tmp_path, archive):
    prefix = SMALL / "ckpt-0"
    assert resolve_checkpoint(prefix)[0] == prefix
    assert resolve_checkpoint(f"{prefix}.index")[0] == prefix
    assert resolve_checkpoint(SMALL)[0] == prefix  # the folder (one *.index)
    unpacked, entry = resolve_checkpoint(archive, cache=tmp_path / "cache")
    assert entry is None and unpacked.name == "ckpt-0" and unpacked.parent.name == NAME
    with pytest.raises(FileNotFoundError, match="neither a path nor a published name"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "two").mkdir()
    for name in ("a.index", "b.index"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="several checkpoints"):
        resolve_checkpoint(tmp_path / "two")


def test_published_name_is_fetched_once_into_the_cache(tmp_path, archive):
    cache = tmp_path / "cache"
    prefix, entry = resolve_checkpoint(NAME, cache=cache, url=archive.as_uri())
    assert entry.model == "max-deeplab-s" and entry.crop == 641 and prefix.is_relative_to(cache)
    assert (cache / "archives" / f"{NAME}.tar.gz").is_file()
    archive.unlink()  # a second use reads the cache, no download
    assert resolve_checkpoint(NAME, cache=cache, url=archive.as_uri())[0] == prefix
    with pytest.raises(ValueError, match="cannot download max_deeplab_s_os16_res641_200k"):
        resolve_checkpoint("max_deeplab_s_os16_res641_200k", cache=cache, url=archive.as_uri())


def test_truncated_archive_is_named(tmp_path, archive):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(archive.read_bytes()[:100_000])
    with pytest.raises(ValueError, match=r"cannot unpack .*bad\.tar\.gz"):
        resolve_checkpoint(bad, cache=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "unpacked").iterdir())


def test_cli_writes_a_model_directory_predict_reads(tmp_path, archive, monkeypatch, capsys):
    monkeypatch.setenv("CMT_DEEPLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "max_s_small"
    assert cli("--checkpoint", NAME, "--url", archive.as_uri(), "--model", "max-deeplab-s",
               "--out", str(out), "--crop", "129", *settings()) == 0
    printed = capsys.readouterr().out
    assert "loaded          525" in printed and sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "conversion.json", "model.safetensors"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["build_kwargs"]["num_slots"] == 32
    assert config["input"]["crop"] == [129, 129] and config["data"]["name"] == "coco"
    assert config["converted_from"]["url"] == ARCHIVE_URL(NAME)
    report = json.loads((out / "conversion.json").read_text())
    assert report["counts"] == {"loaded": 525, "unused": 3, "new": 0, "skipped": 0,
                                "bookkeeping": 104}
    row = next(r for r in report["loaded"] if r["tensor"] == "memory.weight")
    assert row == {"variable": "encoder/memory_feature/.ATTRIBUTES/VARIABLE_VALUE",
                   "tensor": "memory.weight", "layout": "memory", "checkpoint_shape": [1, 32, 64],
                   "shape": [32, 64]}

    model = cmt_deeplab.load_model(out)
    reference, _ = convert_deeplab2(SMALL / "ckpt-0", "max-deeplab-s",
                                    overrides=dict(META["port_config"]))
    assert not model.training
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    image = np.load(SMALL / "reference.npz")["a_129x129/input"][0]
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert cli_main.main(["predict", "--checkpoint", str(out), "--input",
                          str(tmp_path / "photo.png"), "--output", str(tmp_path / "pred")]) == 0
    assert (tmp_path / "pred" / "panoptic" / "photo.png").is_file()


def ARCHIVE_URL(name: str) -> str:  # noqa: N802 - a constant-like helper
    from cmt_deeplab.convert.archives import ARCHIVES

    return ARCHIVES[name].url


def test_backbone_only_into_a_cmt_model_with_its_own_classes(tmp_path, capsys):
    out = tmp_path / "cmt"
    backbone = ["--set", "width_multiplier=0.0625", "--set", "stem_width_multiplier=0.0625",
                "--set", "backbone_num_blocks=[1, 2, 3, 1]", "--set", "axial_num_heads=8"]
    assert cli("--checkpoint", str(SMALL), "--model", "cmt-deeplab-tiny", "--backbone-only",
               "--num-classes", "5", "--num-thing-classes", "2", "--out", str(out), *backbone) == 0
    report = json.loads((out / "conversion.json").read_text())
    assert report["backbone_only"] and report["counts"]["new"] > 0
    assert all(r["tensor"].startswith("backbone.") for r in report["loaded"])
    stages = {"_stem", "_stage2", "_stage3", "_stage4", "_stage5"}  # not _stage5_extra
    encoder = [n for n in TFCheckpoint(SMALL / "ckpt-0")
               if n.split("/")[:2] in [["encoder", s] for s in stages] and "_transformer/" not in n]
    assert report["counts"]["loaded"] == len(encoder) == 221
    # The MaX-S COCO checkpoint's transformers and heads are not taken.
    assert any("_block1_transformer" in u for u in report["unused"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert [c["name"] for c in config["data"]["categories"]][:2] == ["class_1", "class_2"]
    model = cmt_deeplab.load_model(out)
    assert model.predictor.class_head.out_features == 6


def test_errors_leave_nothing_behind(tmp_path, capsys):
    out = tmp_path / "wrong"
    # The small MaX-S checkpoint into MaX-L: the error names a variable, and no directory.
    assert cli("--checkpoint", str(SMALL), "--model", "max-deeplab-l", "--out", str(out),
               *settings()) == 2
    error = capsys.readouterr().err
    assert "does not fit max-deeplab-l" in error and "encoder/" in error
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli("--checkpoint", str(SMALL), "--model", "max-deeplab-s", "--out", str(out),
               *settings()) == 2
    assert "exists" in capsys.readouterr().err and (out / "keep.txt").is_file()
    assert cli("--checkpoint", str(SMALL), "--model", "cmt-deeplab-s", "--out",
               str(tmp_path / "cmt")) == 2
    assert "--backbone-only" in capsys.readouterr().err
    assert cli("--model", "max-deeplab-s") == 2
    assert "--checkpoint, --out required" in capsys.readouterr().err


def test_list_names_the_published_checkpoints(capsys):
    assert cli("--list") == 0
    printed = capsys.readouterr().out
    assert NAME in printed and "max_deeplab_s_backbone_imagenet1k" in printed
