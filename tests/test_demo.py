"""The quick demo end to end, its resume, and its report in a real headless browser."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmt_deeplab.cli.main import main

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    own = out / "mine.png"
    Image.fromarray(np.full((40, 50, 3), 120, dtype=np.uint8)).save(own)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        assert main(["demo", "--out", str(out), "--quick", "--no-progress",
                     "--images", str(own)]) == 0
    (out / "first_run.log").write_text(printed.getvalue())
    return out


def test_quick_demo_writes_every_part(demo_dir):
    report = (demo_dir / "report.html").read_text()
    for heading in ("Panoptic quality", "Training curves", "Predictions", "Inside the clusters",
                    "Cost (the paper"):
        assert heading in report
    assert report.count("data:image/png;base64,") >= 4
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert metrics["num_images"] == 16 and 0.0 <= metrics["All"]["pq"] <= 1.0
    predictions = json.loads((demo_dir / "predictions" / "index.json").read_text())
    assert [p["source"] for p in predictions].count("yours") == 1
    assert (demo_dir / "maps" / "clustering.png").exists()
    costs = {row["model"]: row for row in json.loads((demo_dir / "cost.json").read_text())}
    assert costs["cmt-deeplab-s"]["params_paper"] == 94_818_500
    assert costs["cmt-deeplab-tiny"]["fps"] > 0
    trained = json.loads(next(demo_dir.rglob("demo_train.json")).read_text())
    assert 1 <= trained["steps"] <= trained["planned_steps"] <= trained["budget_steps"] == 30


def test_first_run_says_what_it_does_once(demo_dir):
    printed = (demo_dir / "first_run.log").read_text()
    assert "--resume" not in printed and "no complete training state" not in printed
    assert printed.count("report: ") == 1


def test_demo_outputs_get_the_mode_of_open(demo_dir):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.html", "metrics.json", "cost.json", "predictions/index.json",
                 "run/model.safetensors"):
        assert stat.S_IMODE((demo_dir / name).stat().st_mode) == 0o666 & ~umask, name


def test_demo_resumes_without_redoing_work(demo_dir, capsys):
    before = (demo_dir / "metrics.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(demo_dir), "--quick", "--no-progress",
                 "--images", str(demo_dir / "mine.png")]) == 0
    out = capsys.readouterr().out
    assert out.count("done before") >= 5
    assert (demo_dir / "metrics.json").stat().st_mtime_ns == before


def test_demo_rejects_missing_user_image(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quick", "--images", str(tmp_path / "no.png")]) == 2
    assert "no.png" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_with_its_images_in_a_headless_browser(demo_dir):
    browser = _chromium()
    if browser is None:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium)")
    url = (demo_dir / "report.html").resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True,
        ).stdout
    total = int(dom.split('data-images-total="')[1].split('"')[0])
    loaded = int(dom.split('data-images-loaded="')[1].split('"')[0])
    assert total >= 4 and loaded == total
    shot = demo_dir / "screenshot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,2400",
             f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True,
        )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, "the screenshot is blank"


def test_report_charts_are_svg_images_the_page_cannot_restyle(demo_dir):
    report = (demo_dir / "report.html").read_text()
    assert "<svg" not in report  # no hand-written inline SVG
    charts = report.split('<img class="chart" alt="')[1:]
    assert charts, "no chart in the report"  # which ones depends on how far training got
    assert all('src="data:image/svg+xml;base64,' in chart for chart in charts)


def test_full_demo_trains_the_synthetic_presets_recipe():
    # The full demo copies the preset's steps, batch and image size: they must not drift apart.
    from cmt_deeplab.demo.pipeline import FULL
    from cmt_deeplab.engine.config import load_train_config

    preset = load_train_config("synthetic_cmt_deeplab_tiny")
    assert (FULL.steps, FULL.batch_size) == (preset.run.steps, preset.run.batch_size)
    assert [FULL.image_size] * 2 == list(preset.input.crop)
