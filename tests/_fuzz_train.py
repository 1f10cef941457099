"""Fuzz cases of ``cmt-deeplab train``: settings of the wrong type or value, every float
setting given NaN, bad config files and outputs. ``--print-config`` stops right after the
settings are checked, so most cases cost no model."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

from _fuzz import Expect, Workspace, fuzz_case
from cmt_deeplab.engine.config import TrainConfig

CONFIG = "synthetic_cmt_deeplab_tiny"


def _train(*extra: str) -> list[str]:
    return ["train", "--config", CONFIG, *extra, "--print-config"]


def float_settings(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a float (or optional float, or list of floats) setting."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            keys += float_settings(hint, f"{prefix}{field.name}.")
        elif float in (hint, *typing.get_args(hint)) or hint == list[float]:
            keys.append(f"{prefix}{field.name}")
    return keys


def _nan_case(key: str, value: str) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        text = f"[0.9, {value}]" if key == "optimizer.betas" else value
        return Expect(_train("--set", f"{key}={text}"),
                      names=[key + ("[1]" if key == "optimizer.betas" else ""),
                             "must be a finite number"], code=2)

    return case


for _key in float_settings():
    fuzz_case(f"train-set-nan-{_key}")(_nan_case(_key, ".nan"))
for _key in ("loss.pq_weight", "optimizer.weight_decay", "optimizer.lr", "run.grad_clip",
             "augmentation.max_scale", "evaluation.thing_area_limit"):
    fuzz_case(f"train-set-inf-{_key}")(_nan_case(_key, ".inf" if "lr" not in _key else "-.inf"))


#: Settings the config refuses: name -> (argv before --print-config, strings named).
BAD_SETTINGS: dict[str, tuple[list[str], list[str]]] = {
    "unknown-key": (["--set", "loss.pq_wieght=1"], ["loss.pq_wieght", "pq_weight"]),
    "unknown-section": (["--set", "losses.pq_weight=1"], ["losses"]),
    "steps-text": (["--set", "run.steps=many"], ["run.steps", "many"]),
    "steps-zero": (["--steps", "0"], ["run.steps", "0"]),
    "steps-float": (["--set", "run.steps=2.5"], ["run.steps", "2.5"]),
    "steps-bool": (["--set", "run.steps=true"], ["run.steps", "True"]),
    "batch-size-zero": (["--batch-size", "0"], ["run.batch_size", "0"]),
    "batch-not-multiple": (["--set", "run.accumulate=3", "--batch-size", "8"],
                           ["run.accumulate"]),
    "lr-negative": (["--lr", "-0.1"], ["optimizer.lr", "-0.1"]),
    "lr-zero": (["--set", "optimizer.lr=0"], ["optimizer.lr", "0"]),
    "lr-text": (["--lr", "fast"], ["--lr", "fast"]),
    "lr-nan-flag": (["--lr", "nan"], ["optimizer.lr", "nan"]),
    "time-limit-inf-flag": (["--time-limit", "inf"], ["run.time_limit_s", "inf"]),
    "betas-one-value": (["--set", "optimizer.betas=[0.9]"], ["optimizer.betas"]),
    "betas-above-one": (["--set", "optimizer.betas=[0.9, 1.5]"], ["optimizer.betas", "1.5"]),
    "betas-a-string": (["--set", "optimizer.betas=fast"], ["optimizer.betas", "fast"]),
    "weight-decay-negative": (["--set", "optimizer.weight_decay=-1"],
                              ["optimizer.weight_decay", "-1"]),
    "optimizer-unknown": (["--set", "optimizer.name=adamax"], ["optimizer.name", "adamax"]),
    "amp-unknown": (["--set", "run.amp=fp8"], ["run.amp", "fp8"]),
    "recompute-unknown": (["--set", "model.recompute=all"], ["model.recompute", "all"]),
    "num-slots-zero": (["--set", "model.num_slots=0"], ["model.num_slots", "0"]),
    "end-lr-factor-above-one": (["--set", "schedule.end_lr_factor=2"],
                                ["schedule.end_lr_factor", "2"]),
    "crop-zero": (["--crop", "0"], ["--crop", "0"]),
    "crop-text": (["--crop", "wide"], ["--crop", "wide"]),
    "crop-huge": (["--set", "input.crop=100000"], ["input.crop", "100000"]),
    "eval-size-bad": (["--set", "input.eval_size=3x"], ["input.eval_size", "3x"]),
    "method-unknown": (["--set", "evaluation.method=best"], ["evaluation.method", "best"]),
    "set-without-equals": (["--set", "loss.pq_weight"], ["loss.pq_weight"]),
    "set-bad-yaml": (["--set", "optimizer.betas=[0.9, "], ["optimizer.betas"]),
    "set-a-section": (["--set", "loss=3"], ["loss", "3"]),
    "keep-last-negative": (["--set", "run.keep_last=-1"], ["run.keep_last"]),
}


def _setting_case(argv: list[str], names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        return Expect(_train(*argv), names=names)

    return case


for _name, (_argv, _names) in BAD_SETTINGS.items():
    fuzz_case(f"train-{_name}")(_setting_case(_argv, _names))


def _config_file_case(text: bytes | None, names: list[str]) -> Callable[[Workspace], Expect]:
    def case(ws: Workspace) -> Expect:
        path = ws.tmp / "my config.yaml"
        if text is not None:
            path.write_bytes(text)
        return Expect(["train", "--config", str(path), "--print-config"],
                      names=["my config.yaml", *names])

    return case


for _name, _text, _names in [
    ("missing", None, []),
    ("not-yaml", b"run: {steps: [", []),
    ("a-list", b"- run\n- steps\n", []),
    ("unknown-section", b"trainer:\n  steps: 3\n", ["trainer"]),
    ("section-a-number", b"run: 3\n", ["run", "3"]),
    ("nan-setting", b"loss:\n  pq_weight: .nan\n", ["loss.pq_weight", "finite"]),
    ("binary", b"\xff\xfe\x00\x01", []),
]:
    fuzz_case(f"train-config-{_name}")(_config_file_case(_text, _names))


@fuzz_case("train-out-is-a-file")
def _(ws: Workspace) -> Expect:
    (ws.tmp / "run").write_text("a file")
    return Expect(["train", "--config", CONFIG, "--out", str(ws.tmp / "run"), "--steps", "1"],
                  names=["--out", "run"])


@fuzz_case("train-no-out")
def _(ws: Workspace) -> Expect:
    return Expect(["train", "--config", CONFIG, "--steps", "1"], names=["--out"])


@fuzz_case("train-repeated-image-ids", slow=True)
def _(ws: Workspace) -> Expect:
    root, data = ws.copy_split()
    data["images"].append(dict(data["images"][0], file_name="copy.png"))
    ws.write_split(root, data)
    return Expect(["train", "--config", CONFIG, "--data", str(root), "--train-split", "val",
                   "--out", str(ws.out), "--steps", "1", "--device", "cpu", "--no-progress"],
                  names=["panoptic_val.json", "image id 1 has 2 image records"])


def _tiny_run(ws: Workspace, *extra: str) -> list[str]:
    return ["train", "--config", CONFIG, "--data", str(ws.data), "--train-split", "val",
            "--out", str(ws.out / "run"), "--crop", "24", "--batch-size", "1", "--eval-every",
            "0", "--device", "cpu", "--num-workers", "0", "--no-progress", *extra]


def _damaged_resume(damage: Callable, file_name: str, names: list[str]):
    """Trains one step (a training state), damages the state, then resumes: refused."""

    def case(ws: Workspace) -> Expect:
        from _fuzz import run_in_process
        from cmt_deeplab.engine.training_state import latest_checkpoint

        code, output = run_in_process(_tiny_run(ws, "--steps", "1"))
        assert code == 0, output
        state = latest_checkpoint(ws.out / "run")
        damage(state / file_name)
        return Expect(_tiny_run(ws, "--steps", "2", "--resume"),
                      names=[str(state / file_name), *names])

    return case


def _flip_last_bytes(path) -> None:
    data = bytearray(path.read_bytes())
    data[-8:] = b"\xff" * 8
    path.write_bytes(bytes(data))


for _name, _damage, _file, _names in [
    ("state-json-corrupt", lambda p: p.write_text("{"), "state.json", ["corrupt"]),
    ("state-tensors-overwritten", _flip_last_bytes, "state.safetensors", ["SHA-256"]),
    ("weights-overwritten", _flip_last_bytes, "model.safetensors", ["SHA-256"]),
    ("config-without-data", lambda p: p.write_text("model: {name: cmt-deeplab-tiny}\n"),
     "config.yaml", ["'data'"]),
]:
    fuzz_case(f"train-resume-{_name}", slow=True)(_damaged_resume(_damage, _file, _names))


@fuzz_case("train-zero-image-split")
def _(ws: Workspace) -> Expect:
    root, data = ws.copy_split()
    ws.write_split(root, {**data, "images": [], "annotations": []})
    return Expect(["train", "--config", CONFIG, "--data", str(root), "--train-split", "val",
                   "--out", str(ws.out), "--steps", "1", "--device", "cpu", "--no-progress"],
                  names=["panoptic_val.json", "no annotated images"])
