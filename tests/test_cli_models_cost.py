"""The ``models`` and ``cost`` commands end to end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from cmt_deeplab.cli.cost import format_rows
from cmt_deeplab.cli.main import main
from cmt_deeplab.cost import PAPER_TABLE2, CostRow


def test_models_table_lists_every_model_with_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "max-deeplab-s" in out and "61,900,200" in out
    assert "cmt-deeplab-l-rfn" in out and "270,201,608" in out


def test_models_json_and_pattern(capsys):
    assert main(["models", "cmt-*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"cmt-deeplab-s", "cmt-deeplab-tiny"}
    assert all(r["name"].startswith("cmt-") for r in rows)


def test_cost_json_rows_have_the_documented_keys(capsys):
    assert main(["cost", "--models", "cmt-deeplab-tiny,max-deeplab-tiny", "--size", "65x97",
                 "--format", "json", "--repeats", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["cmt-deeplab-tiny", "max-deeplab-tiny"]
    for row in rows:
        assert {"model", "params", "params_paper", "gmacs", "fps", "latency_s", "peak_mem_bytes"} <= set(row)
        assert row["params"] > row["params_paper"] > 0
        assert row["gmacs"] > 0 and row["fps"] > 0 and row["latency_s"] > 0
        assert row["peak_mem_bytes"] >= 0


def test_cost_counts_paper_models_without_timing(capsys):
    assert main(["cost", "--models", "max-deeplab-s", "--size", "800x1200", "--no-timing",
                 "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    values = dict(zip(header, row, strict=True))
    assert int(values["params_paper"]) == 61_900_200
    assert abs(float(values["gmacs"]) / 291 - 1) < 0.02


def test_cost_rejects_unknown_model_and_bad_size(capsys):
    assert main(["cost", "--models", "cmt-deeplab-xxl", "--no-timing"]) == 2
    assert "cmt-deeplab-xxl" in capsys.readouterr().err
    assert main(["cost", "--models", "cmt-deeplab-tiny", "--size", "abc"]) == 2
    assert "bad size" in capsys.readouterr().err


def test_cost_train_crop_prints_training_memory_beside_the_paper(capsys, monkeypatch):
    import cmt_deeplab.cli.cost as cost

    calls = []

    def fake_memory(name, crop, device, batch, recompute):
        calls.append((name, crop, batch, recompute))
        if name == "cmt-deeplab-s":
            raise MemoryError("cmt-deeplab-s at 65x65: killed (out of memory)")
        return 3 * 2**30, "cpu peak RSS increase"

    # The measurement itself (a training step in a fresh process) is tested below on a small
    # model; here: the columns, the paper's figures and a model that does not fit.
    monkeypatch.setattr(cost, "measure_training_memory", fake_memory)
    assert main(["cost", "--models", "max-deeplab-s,cmt-deeplab-s", "--size", "65",
                 "--no-timing", "--train-crop", "65", "--recompute", "blocks"]) == 0
    out = capsys.readouterr().out
    assert calls == [("max-deeplab-s", (65, 65), 1, "blocks"),
                     ("cmt-deeplab-s", (65, 65), 1, "blocks")]
    assert "train mem / image" in out and "paper train mem" in out
    max_row = next(line for line in out.splitlines() if line.startswith("max-deeplab-s"))
    assert "3.00 GiB" in max_row and "6.3G" in max_row
    cmt_row = next(line for line in out.splitlines() if line.startswith("cmt-deeplab-s"))
    assert "did not fit" in cmt_row and "10.2G" in cmt_row
    assert "recompute blocks" in out and "out of memory" in out


def test_training_memory_is_measured_in_a_fresh_process():
    from cmt_deeplab.cost import measure_training_memory

    plain, kind = measure_training_memory("cmt-deeplab-tiny", (65, 65), "cpu", num_classes=6,
                                          num_thing_classes=3, num_slots=8)
    assert plain > 0 and kind == "CPU peak RSS increase"


def _output_bytes(name: str, size: int) -> int:
    import torch

    from cmt_deeplab import build_model

    model = build_model(name).eval()
    with torch.inference_mode():
        outputs = model(torch.zeros(1, 3, size, size))
    tensors = [v for v in outputs.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def test_cost_shows_progress_and_each_models_own_peak(capsys):
    # Peak memory is that of each model's first forward in a fresh process: at least what the
    # forward returns (a peak taken after warm-up forwards, in a process that ran another model
    # first, reads less: the allocator reuses freed blocks without the resident size growing).
    assert main(["cost", "--models", "max-deeplab-tiny,cmt-deeplab-tiny", "--size", "193",
                 "--repeats", "1", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "cost: [1/2] max-deeplab-tiny: counting, timing 1 forward(s) ..." in captured.err
    assert "cost: [2/2] cmt-deeplab-tiny: done in" in captured.err
    for row in json.loads(captured.out):
        assert row["peak_mem_bytes"] >= _output_bytes(row["model"], 193), row


def test_cost_table_headers_and_the_papers_own_figures(capsys):
    assert main(["cost", "--models", "cmt-deeplab-s", "--size", "65", "--no-timing"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for column in ("params", "params + aux head", "paper params", "paper GMACs", "peak mem"):
        assert column in header
    assert "paper's and deeplab2's convention" in out
    row = next(line for line in out.splitlines() if line.startswith("cmt-deeplab-s"))
    assert "94,818,500" in row and "110,674,985" in row and "95M" in row and "396" in row


@pytest.mark.slow
def test_cost_backends_add_bf16_and_onnxruntime_columns(capsys):
    pytest.importorskip("onnxruntime", reason="the onnxruntime column needs the [export] extra")
    assert main(["cost", "--models", "cmt-deeplab-tiny", "--size", "65x65", "--repeats", "1",
                 "--threads", "2", "--backends", "eager,bf16,onnxruntime",
                 "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row["backend_fps"]) == {"bf16", "onnxruntime"}
    assert all(fps > 0 for fps in row["backend_fps"].values())


def test_cost_backends_table_and_markdown_columns(capsys):
    assert main(["cost", "--models", "max-deeplab-tiny", "--size", "65x65", "--repeats", "1",
                 "--backends", "inference,bf16"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "inference FPS" in header and "bf16 FPS" in header and "onnxruntime FPS" not in header
    assert "bf16 FPS: the bf16 inference path" in out and "inference FPS: predict's" in out
    row = CostRow("max-deeplab-s", 641, 641, 10, 9, 5.0, fps=1.0, latency_s=1.0,
                  device="cpu (2 threads)", backend_fps={"bf16": 1.5})
    table = format_rows([row], "markdown").splitlines()
    assert "| FPS | bf16 FPS | paper FPS |" in table[0]
    assert table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert f"| 1.00 | 1.50 | {PAPER_TABLE2['max-deeplab-s']['fps']} |" in table[2]


def test_cost_backends_errors_and_missing_onnxruntime(capsys, monkeypatch):
    import cmt_deeplab.cli.cost as cost_cli

    assert main(["cost", "--models", "cmt-deeplab-tiny", "--size", "65x65",
                 "--backends", "eager,tensorrt"]) != 0
    assert "unknown --backends tensorrt" in capsys.readouterr().err
    assert main(["cost", "--models", "cmt-deeplab-tiny", "--size", "65x65", "--no-timing",
                 "--backends", "bf16"]) != 0
    assert "drop --no-timing" in capsys.readouterr().err
    monkeypatch.setattr(cost_cli, "onnxruntime_available", lambda: False)
    assert main(["cost", "--models", "cmt-deeplab-tiny", "--size", "65x65", "--repeats", "1",
                 "--backends", "onnxruntime", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["backend_fps"] == {}
    assert "onnxruntime column is left out: onnxruntime is not installed" in captured.err



def test_cost_times_in_a_fresh_process_set_up_as_predict(monkeypatch, tmp_path):
    """Eager and each backend run in their own process, with the caller's thread count and
    glibc keeping freed blocks (as ``predict``): checked from inside the timed process."""
    from cmt_deeplab.cost.measure import measure_cost

    report = tmp_path / "probe.json"
    monkeypatch.setenv("CMT_DEEPLAB_TEST_PROBE", str(report))  # spawned processes inherit it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        row = measure_cost("max-deeplab-tiny", 33, 33, repeats=1,
                           backends={"probe": _process_probe_backend})
    finally:
        torch.set_num_threads(threads)
    assert row.device == "cpu (1 threads)" and row.backend_fps["probe"] > 0
    seen = json.loads(report.read_text())
    assert seen["threads"] == 1
    assert seen["pid"] != os.getpid()
    assert seen["keeps_freed_memory"] == sys.platform.startswith("linux")


def _process_probe_backend(model: torch.nn.Module, images: torch.Tensor):
    """A backend that writes what its process saw (module level: it goes to another process)."""
    from cmt_deeplab.utils import allocator

    Path(os.environ["CMT_DEEPLAB_TEST_PROBE"]).write_text(json.dumps({
        "threads": torch.get_num_threads(), "pid": os.getpid(),
        "keeps_freed_memory": allocator._tuned}))
    return lambda: model(images)
