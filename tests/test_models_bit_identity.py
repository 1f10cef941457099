"""Every registered model, built small with ``torch.manual_seed(0)``, keeps its state_dict
layout and its outputs: a guard for refactors that must not change numerics.

``tests/fixtures/model_outputs.json`` holds, per model, a SHA-256 digest of the ordered
state_dict keys and shapes (of the small build and of the full-size one, built on the meta
device), and checksums (mean, mean of absolute values, mean weighted by fixed random weights, in float64)
of every output tensor, in eval and in train mode, on a fixed input. The checksums are compared
within 1e-6 absolute: bit-identical outputs on one machine, while another CPU's kernels may
differ in the last bits. A change that is meant to alter numerics records the file again:

    .venv/bin/python tests/test_models_bit_identity.py --record
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

import cmt_deeplab
from _small_models import small_model

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "model_outputs.json"
TOLERANCE = 1e-6


def _flatten(outputs: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{"aux_outputs": [{"pred_masks": t}]}`` -> ``{"aux_outputs.0.pred_masks": t}``."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in outputs.items():
        path = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            flat[path] = value
        elif isinstance(value, list):
            for index, item in enumerate(value):
                flat.update(_flatten(item, f"{path}.{index}."))
        else:
            raise TypeError(f"unexpected output {path}: {type(value).__name__}")
    return flat


def _checksums(outputs: dict) -> dict[str, list]:
    """``path -> [shape, mean, mean |x|, weighted mean]`` of every output tensor."""
    sums = {}
    for path, tensor in sorted(_flatten(outputs).items()):
        values = tensor.detach().double().flatten()
        weights = torch.rand(values.numel(), generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
        sums[path] = [list(tensor.shape), values.mean().item(), values.abs().mean().item(),
                      (values * weights).mean().item()]
    return sums


def _layout(model: torch.nn.Module) -> dict:
    """Number of state_dict entries and a digest of their ordered names and shapes."""
    entries = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return {"entries": len(entries), "sha256": digest}


def record(name: str) -> dict:
    """The state_dict layouts and eval/train output checksums of ``name`` built small."""
    with torch.device("meta"):
        full = _layout(cmt_deeplab.build_model(name))
    torch.manual_seed(0)
    model = small_model(name)
    images = torch.randn(2, 3, 49, 65, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        evaluated = _checksums(model.eval()(images))
        torch.manual_seed(2)  # drop path draws in train mode
        trained = _checksums(model.train()(images))
    return {"state_dict": _layout(model), "state_dict_full_size": full, "eval": evaluated, "train": trained}


def _expected() -> dict:
    if not FIXTURE.exists():
        pytest.fail(f"{FIXTURE} is missing; record it with: python {Path(__file__).name} --record")
    return json.loads(FIXTURE.read_text())


def test_fixture_covers_every_registered_model():
    assert sorted(_expected()) == sorted(cmt_deeplab.list_models())


@pytest.mark.parametrize("name", cmt_deeplab.list_models())
def test_state_dict_and_outputs_match_the_recorded_ones(name):
    expected = _expected()[name]
    actual = json.loads(json.dumps(record(name)))  # tuples -> lists, as stored
    for key in ("state_dict", "state_dict_full_size"):
        assert actual[key] == expected[key], f"{key}: names or shapes differ"
    for mode in ("eval", "train"):
        assert sorted(actual[mode]) == sorted(expected[mode]), f"{mode} outputs differ in keys"
        for path, (shape, *sums) in expected[mode].items():
            got_shape, *got = actual[mode][path]
            assert got_shape == shape, f"{mode} {path}: shape {got_shape} != {shape}"
            differences = [abs(a - b) for a, b in zip(got, sums, strict=True)]
            assert max(differences) <= TOLERANCE, f"{mode} {path}: {got} != {sums}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(f"usage: python {Path(__file__).name} --record  (writes {FIXTURE})")
    torch.set_num_threads(2)  # as the test suite runs (conftest)
    values = {name: record(name) for name in cmt_deeplab.list_models()}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    temporary = FIXTURE.with_suffix(".tmp")
    temporary.write_text(json.dumps(values, indent=1) + "\n")
    temporary.replace(FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes, {len(values)} models)")
