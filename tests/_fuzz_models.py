"""Fuzz cases of model directories (damaged ``config.yaml`` / ``model.safetensors``, read by
``predict``, ``evaluate`` and ``visualize``), and of ``visualize``, ``convert``, ``synth``,
``cost`` and ``models``."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import yaml

from _fuzz import Expect, Workspace, bomb_png, fuzz_case

SMALL_TF = Path(__file__).resolve().parent / "fixtures" / "deeplab2" / "small"
#: ``--set`` arguments for the small TF checkpoint's widths (as test_convert_cli).
SMALL_TF_SETTINGS = [
    arg for key, value in json.loads((SMALL_TF / "meta.json").read_text())["port_config"].items()
    if key not in ("num_classes", "num_slots", "max_num_slots")
    for arg in ("--set", f"{key}={json.dumps(value)}")]


def _config(directory: Path) -> dict:
    return yaml.safe_load((directory / "config.yaml").read_text())


def _write_config(directory: Path, config: object) -> None:
    (directory / "config.yaml").write_text(yaml.safe_dump(config))


def _edit_config(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        config = _config(directory)
        edit(config)  # in place
        _write_config(directory, config)

    return apply


def _set_kwarg(key: str, value: object) -> Callable[[Path], None]:
    return _edit_config(lambda c: c["model"]["build_kwargs"].__setitem__(key, value))


def _weights(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        path = directory / "model.safetensors"
        path.write_bytes(edit(path.read_bytes()))

    return apply


def _flip_tensor_bytes(data: bytes) -> bytes:
    array = bytearray(data)
    start = 8 + int.from_bytes(array[:8], "little")
    array[start + 64:start + 72] = b"\xff" * 8  # NaNs in the first tensor
    return bytes(array)


def _other_weights(directory: Path) -> None:
    """Weights of the same model with another slot count, digest updated: shapes differ."""
    import hashlib

    import cmt_deeplab
    from _fuzz import SMALL_KWARGS
    from cmt_deeplab.model_dir import _state_dict_bytes

    config = _config(directory)
    kwargs = {**SMALL_KWARGS, **config["model"]["build_kwargs"], "num_slots": 6}
    data = _state_dict_bytes(cmt_deeplab.build_model("cmt-deeplab-tiny", **kwargs))
    (directory / "model.safetensors").write_bytes(data)
    config["weights_sha256"] = hashlib.sha256(data).hexdigest()
    _write_config(directory, config)


def _drop_tensor(directory: Path, add: bool = False) -> None:
    import hashlib

    from safetensors.torch import load, save

    state = load((directory / "model.safetensors").read_bytes())
    if add:
        state["extra.weight"] = next(iter(state.values())).clone()
    else:
        state.pop(sorted(state)[0])
    data = save(state)
    (directory / "model.safetensors").write_bytes(data)
    config = _config(directory)
    config["weights_sha256"] = hashlib.sha256(data).hexdigest()
    _write_config(directory, config)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda directory: (directory / name).unlink()


def _replace_with_dir(name: str) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        (directory / name).unlink()
        (directory / name).mkdir()

    return apply


#: Damaged model directories: name -> (damage, strings the error names besides the file).
CHECKPOINTS: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "config-missing": (_remove("config.yaml"), "config.yaml", []),
    "config-empty": (lambda d: (d / "config.yaml").write_text(""), "config.yaml", []),
    "config-not-yaml": (lambda d: (d / "config.yaml").write_text("model: {name: ["),
                        "config.yaml", ["not valid YAML"]),
    "config-binary": (lambda d: (d / "config.yaml").write_bytes(b"\xff\xfe\x00\x00"),
                      "config.yaml", []),
    "config-a-list": (lambda d: (d / "config.yaml").write_text("- model\n"), "config.yaml",
                      ["not a mapping"]),
    "config-a-directory": (_replace_with_dir("config.yaml"), "config.yaml", []),
    "config-no-model": (_edit_config(lambda c: c.pop("model")), "config.yaml", ["model.name"]),
    "config-model-name-a-number": (_edit_config(lambda c: c["model"].__setitem__("name", 5)),
                                   "config.yaml", ["model.name"]),
    "config-model-unknown": (_edit_config(lambda c: c["model"].__setitem__(
        "name", "cmt-deeplab-xxl")), "config.yaml", ["cmt-deeplab-xxl"]),
    "config-build-kwargs-a-list": (_edit_config(lambda c: c["model"].__setitem__(
        "build_kwargs", [1])), "config.yaml", ["build_kwargs"]),
    "config-build-kwarg-unknown": (_set_kwarg("num_wheels", 4), "config.yaml", ["num_wheels"]),
    "config-num-classes-1e9": (_set_kwarg("num_classes", 10**9), "config.yaml",
                               ["num_classes", "1000000000"]),
    "config-num-slots-1e7": (_set_kwarg("num_slots", 10**7), "model.safetensors",
                             ["10000000"]),
    "config-num-slots-negative": (_set_kwarg("num_slots", -1), "config.yaml", []),
    "config-num-slots-text": (_set_kwarg("num_slots", "many"), "config.yaml", []),
    "config-width-nan": (_set_kwarg("width_multiplier", float("nan")), "config.yaml", []),
    "config-no-data": (_edit_config(lambda c: c.pop("data")), "config.yaml", ["'data'"]),
    "config-categories-not-a-list": (_edit_config(lambda c: c["data"].__setitem__(
        "categories", "all")), "config.yaml", ["'all'"]),
    "config-category-malformed": (_edit_config(lambda c: c["data"]["categories"].__setitem__(
        0, {"name": "circle"})), "config.yaml", ["malformed category record"]),
    "config-category-id-text": (_edit_config(lambda c: c["data"]["categories"][0].__setitem__(
        "id", "one")), "config.yaml", ["'one'"]),
    "config-label-divisor-text": (_edit_config(lambda c: c["data"].__setitem__(
        "label_divisor", "x")), "config.yaml", ["'x'"]),
    "config-eval-size-text": (_edit_config(lambda c: c["input"].__setitem__(
        "eval_size", "large")), "config.yaml", ["input.eval_size", "large"]),
    "config-eval-size-zero": (_edit_config(lambda c: c["input"].__setitem__("eval_size", 0)),
                              "config.yaml", ["input.eval_size"]),
    "config-crop-huge": (_edit_config(lambda c: c.__setitem__("input", {"crop": 10**7})),
                         "config.yaml", ["input.crop", "10000000"]),
    "config-input-a-list": (_edit_config(lambda c: c.__setitem__("input", [24])),
                            "config.yaml", ["'input'"]),
    "config-digest-malformed": (_edit_config(lambda c: c.__setitem__("weights_sha256", 12)),
                                "config.yaml", ["weights_sha256"]),
    "weights-missing": (_remove("model.safetensors"), "model.safetensors", []),
    "weights-empty": (_weights(lambda b: b""), "model.safetensors", []),
    "weights-truncated": (_weights(lambda b: b[: len(b) // 2]), "model.safetensors", []),
    "weights-garbage": (_weights(lambda b: b"\x00" * 64), "model.safetensors", []),
    "weights-tensor-bytes-overwritten": (_weights(_flip_tensor_bytes), "model.safetensors",
                                         ["SHA-256"]),
    "weights-a-directory": (_replace_with_dir("model.safetensors"), "model.safetensors", []),
    "weights-other-shapes": (_other_weights, "model.safetensors", ["shape mismatch"]),
    "weights-missing-a-tensor": (_drop_tensor, "model.safetensors", ["missing key"]),
    "weights-extra-tensor": (lambda d: _drop_tensor(d, add=True), "model.safetensors",
                             ["unexpected key", "extra.weight"]),
}


def _checkpoint_case(command: str, damage: Callable[[Path], None], file_name: str,
                     names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        directory = ws.copy_checkpoint()
        damage(directory)
        if command == "predict":
            argv = ["predict", "--checkpoint", str(directory), "--input", str(ws.image),
                    "--output", str(ws.out), "--device", "cpu"]
        elif command == "evaluate":
            argv = ["evaluate", "--checkpoint", str(directory), "--data", str(ws.data),
                    "--split", "val", "--output", str(ws.out), "--device", "cpu"]
        else:
            argv = ["visualize", "--checkpoint", str(ws.checkpoint), "--compare-checkpoint",
                    str(directory), "--image", str(ws.image), "--size", "24", "--out",
                    str(ws.out)]
        return Expect(argv, names=[str(directory / file_name), *names], code=2)

    return case


for _name, (_damage, _file, _names) in CHECKPOINTS.items():
    fuzz_case(f"checkpoint-predict-{_name}")(_checkpoint_case("predict", _damage, _file, _names))
for _name in ("config-no-data", "weights-tensor-bytes-overwritten", "config-num-slots-1e7",
              "weights-truncated"):
    _damage, _file, _names = CHECKPOINTS[_name]
    fuzz_case(f"checkpoint-evaluate-{_name}")(_checkpoint_case("evaluate", _damage, _file,
                                                               _names))
    fuzz_case(f"checkpoint-visualize-compare-{_name}")(
        _checkpoint_case("visualize", _damage, _file, _names))


# -- visualize --------------------------------------------------------------------------------
def _visualize(ws: Workspace, *extra: str, image: Path | None = None) -> list[str]:
    return ["visualize", "--checkpoint", str(ws.checkpoint), "--image",
            str(image or ws.image), "--size", "24", "--out", str(ws.out), *extra]


def _visualize_image_case(data: bytes | None, names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        path = ws.tmp / "picture.png"
        if data is not None:
            path.write_bytes(data)
        return Expect(_visualize(ws, image=path), names=["picture.png", *names])

    return case


for _name, _data, _names in [
    ("missing", None, []),
    ("empty", b"", []),
    ("garbage", b"GIF89a nonsense", []),
    ("bomb", bomb_png(), ["400000000 pixels"]),
]:
    fuzz_case(f"visualize-image-{_name}")(_visualize_image_case(_data, _names))

VISUALIZE_FLAGS: dict[str, tuple[list[str], list[str]]] = {
    "slots-text": (["--slots", "a,b"], ["--slots", "a,b"]),
    "slots-out-of-range": (["--slots", "999"], ["999"]),
    "slots-negative": (["--slots", "-1"], ["-1"]),
    "max-slots-zero": (["--max-slots", "0"], ["--max-slots", "0"]),
    "max-slots-negative": (["--max-slots", "-2"], ["--max-slots", "-2"]),
    "size-bad": (["--size", "0"], ["--size", "0"]),
    "device-bad": (["--device", "tpu"], ["tpu"]),
}


def _visualize_flag(extra: list[str], names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        return Expect(_visualize(ws, *extra), names=names)

    return case


for _name, (_extra, _names) in VISUALIZE_FLAGS.items():
    fuzz_case(f"visualize-flag-{_name}")(_visualize_flag(_extra, _names))


@fuzz_case("visualize-out-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "maps").write_text("taken")
    argv = _visualize(ws)
    argv[argv.index("--out") + 1] = str(ws.tmp / "maps")
    return Expect(argv, names=["--out", "maps"])


@fuzz_case("visualize-unusual-image-grey-one-pixel")
def _(ws: Workspace) -> Expect:
    from PIL import Image

    path = ws.tmp / "dot.png"
    Image.new("L", (1, 1), 128).save(path)
    return Expect(_visualize(ws, image=path), ok=True, names=["wrote"])


# -- convert ----------------------------------------------------------------------------------
def _convert(ws: Workspace, checkpoint: str, *extra: str) -> list[str]:
    return ["convert", "deeplab2", "--checkpoint", checkpoint, "--model", "max-deeplab-s",
            "--out", str(ws.out / "converted"), *extra]


def _convert_case(make: Callable[[Workspace], str], names: list[str], *extra: str):
    def case(ws: Workspace) -> Expect:
        return Expect(_convert(ws, make(ws), *extra), names=names)

    return case


def _file(name: str, data: bytes) -> Callable[[Workspace], str]:
    def make(ws: Workspace) -> str:
        (ws.tmp / name).write_bytes(data)
        return str(ws.tmp / name)

    return make


def _empty_folder(ws: Workspace) -> str:
    (ws.tmp / "no_ckpt").mkdir()
    return str(ws.tmp / "no_ckpt")


def _bad_index(ws: Workspace) -> str:
    (ws.tmp / "ckpt-1.index").write_bytes(b"\x00" * 100)
    (ws.tmp / "ckpt-1.data-00000-of-00001").write_bytes(b"")
    return str(ws.tmp / "ckpt-1")


def _tar_with_escape(ws: Workspace) -> str:
    path = ws.tmp / "evil.tar.gz"
    payload = ws.tmp / "payload"
    payload.write_text("x")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(payload, arcname="../../escaped.txt")
    return str(path)


for _name, _make, _names in [
    ("missing", lambda ws: str(ws.tmp / "nothing-here"), ["nothing-here"]),
    ("garbage-file", _file("weights.bin", b"not a checkpoint"), ["weights.bin"]),
    ("garbage-tar", _file("ckpt.tar.gz", b"\x1f\x8b not really"), ["ckpt.tar.gz"]),
    ("empty-folder", _empty_folder, ["no_ckpt"]),
    ("bad-index", _bad_index, ["ckpt-1"]),
    ("tar-member-escapes", _tar_with_escape, ["../../escaped.txt"]),
]:
    fuzz_case(f"convert-checkpoint-{_name}")(_convert_case(_make, _names))


CONVERT_FLAGS: dict[str, tuple[list[str], list[str]]] = {
    "model-unknown": (["--model", "max-deeplab-xl"], ["max-deeplab-xl"]),
    "set-without-equals": (["--set", "width_multiplier"], ["width_multiplier"]),
    "set-bad-yaml": (["--set", "num_heads=[4"], ["num_heads=[4"]),
    "set-unknown-kwarg": (["--set", "num_wheels=4"], ["num_wheels"]),
    "num-classes-zero": (["--num-classes", "0"], ["0"]),
    "num-classes-text": (["--num-classes", "many"], ["many"]),
    "categories-missing": (["--categories", "cats.json"], ["cats.json"]),
}


def _convert_flag(extra: list[str], names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        argv = _convert(ws, str(SMALL_TF / "ckpt-0"), *SMALL_TF_SETTINGS)
        if "--model" in extra:
            position = argv.index("--model")
            argv = argv[:position] + argv[position + 2:]
        return Expect(argv + extra, names=names)

    return case


for _name, (_extra, _names) in CONVERT_FLAGS.items():
    fuzz_case(f"convert-flag-{_name}", slow=True)(_convert_flag(_extra, _names))


@fuzz_case("convert-out-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "model_dir").write_text("taken")
    argv = _convert(ws, str(SMALL_TF / "ckpt-0"))
    argv[argv.index("--out") + 1] = str(ws.tmp / "model_dir")
    return Expect(argv, names=["--out", "model_dir"])


@fuzz_case("convert-missing-flags")
def _(ws: Workspace) -> Expect:
    return Expect(["convert", "deeplab2", "--model", "max-deeplab-s"],
                  names=["--checkpoint", "--out"])


@fuzz_case("convert-existing-out-without-overwrite")
def _(ws: Workspace) -> Expect:
    return Expect(["convert", "deeplab2", "--checkpoint", str(SMALL_TF / "ckpt-0"), "--model",
                   "max-deeplab-s", "--out", str(ws.out)], names=[str(ws.out), "--overwrite"])


# -- synth, cost, models ---------------------------------------------------------------------
OTHER: dict[str, tuple[Callable[[Workspace], list[str]], list[str]]] = {
    "synth-num-negative": (lambda ws: ["synth", "--out", str(ws.tmp / "s"), "--num", "-1"],
                           ["--num", "-1"]),
    "synth-size-zero": (lambda ws: ["synth", "--out", str(ws.tmp / "s"), "--size", "0"],
                        ["--size", "0"]),
    "synth-out-is-a-file": (lambda ws: [*_touch(ws, "s"), "synth", "--out", str(ws.tmp / "s"),
                                        "--num", "1"], ["--out", "s"]),
    "synth-workers-zero": (lambda ws: ["synth", "--out", str(ws.tmp / "s"), "--workers", "0"],
                           ["--workers", "0"]),
    "synth-crowd-above-one": (lambda ws: ["synth", "--out", str(ws.tmp / "s"), "--crowd", "3"],
                              ["--crowd", "3"]),
    "cost-size-bad": (lambda ws: ["cost", "--models", "cmt-deeplab-tiny", "--size", "0x0"],
                      ["--size", "0x0"]),
    "cost-model-unknown": (lambda ws: ["cost", "--models", "resnet-9000", "--no-timing"],
                           ["resnet-9000"]),
    "models-pattern-no-match": (lambda ws: ["models", "nothing-*"], ["nothing-*"]),
    "demo-out-is-a-file": (lambda ws: [*_touch(ws, "demo"), "demo", "--out",
                                       str(ws.tmp / "demo"), "--quick"], ["--out", "demo"]),
    "demo-image-missing": (lambda ws: ["demo", "--out", str(ws.tmp / "demo"), "--quick",
                                       "--images", str(ws.tmp / "mine.jpg")], ["mine.jpg"]),
    "demo-minutes-negative": (lambda ws: ["demo", "--out", str(ws.tmp / "demo"), "--quick",
                                          "--minutes", "-1"], ["--minutes", "-1"]),
}


def _touch(ws: Workspace, name: str) -> list[str]:
    (ws.tmp / name).write_text("a file")
    return []


def _other_case(make: Callable[[Workspace], list[str]], names: list[str]):
    def case(ws: Workspace) -> Expect:
        return Expect(make(ws), names=names)

    return case


for _name, (_make, _names) in OTHER.items():
    fuzz_case(_name)(_other_case(_make, _names))




# -- export -----------------------------------------------------------------------------------
def _export(ws: Workspace, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--checkpoint", str(checkpoint), "--format", "torch-export", "--out",
            str(out), *extra]


def _export_checkpoint_case(name: str) -> Callable[[Workspace], Expect]:
    damage, file_name, names = CHECKPOINTS[name]

    def case(ws: Workspace) -> Expect:
        directory = ws.copy_checkpoint()
        damage(directory)
        return Expect(_export(ws, directory, ws.out / "model.pt2"),
                      names=[str(directory / file_name), *names], code=2)

    return case


for _name in ("config-no-data", "weights-tensor-bytes-overwritten", "config-num-classes-1e9",
              "weights-other-shapes"):
    fuzz_case(f"export-checkpoint-{_name}")(_export_checkpoint_case(_name))


@fuzz_case("export-out-is-a-directory")
def _(ws: Workspace) -> Expect:
    return Expect(_export(ws, ws.checkpoint, ws.out), names=["--out", str(ws.out)])


@fuzz_case("export-out-folder-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "taken").write_text("a file")
    return Expect(_export(ws, ws.checkpoint, ws.tmp / "taken" / "model.pt2"),
                  names=["--out", "taken"])


@fuzz_case("export-size-bad")
def _(ws: Workspace) -> Expect:
    return Expect(_export(ws, ws.checkpoint, ws.out / "m.pt2", "--size", "1x1"),
                  names=["--size", "1x1"])


@fuzz_case("export-format-unknown")
def _(ws: Workspace) -> Expect:
    return Expect(["export", "--checkpoint", str(ws.checkpoint), "--format", "tflite", "--out",
                   str(ws.out / "m.tflite")], names=["--format", "tflite"])


@fuzz_case("export-checkpoint-missing")
def _(ws: Workspace) -> Expect:
    return Expect(_export(ws, ws.tmp / "no_model", ws.out / "m.pt2"), names=["no_model"])
