"""The report's charts (matplotlib, SVG images): in a real browser each series' colour shows
in the legend beside the axes."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

from cmt_deeplab.demo.charts import COLOURS, line_chart

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TERMS = {name: [(step, scale * np.exp(-step / 400) + floor) for step in range(0, 1700, 25)]
         for name, scale, floor in (("pq", 3.0, 0.5), ("mask_id", 1.2, 0.2),
                                    ("instance", 5.0, 1.0), ("semantic", 1e-3, 1.39e-4))}


def _svg(tag: str) -> str:
    return base64.b64decode(tag.split("base64,")[1].split('"')[0]).decode()


def test_chart_is_an_svg_image_with_every_series_in_its_legend():
    tag = line_chart(TERMS, "loss terms", ylabel="loss", log_y=True)
    assert tag.startswith('<img class="chart" alt="loss terms" src="data:image/svg+xml;base64,')
    svg = _svg(tag)
    assert "<svg" in svg and 'id="legend_1"' in svg
    for colour in COLOURS[:4]:
        assert f"stroke: {colour}" in svg  # a curve and its legend sample
    assert line_chart({"lr": []}, "learning rate").startswith("<p class='note'>")


def test_chart_in_a_browser_shows_coloured_legend_entries(tmp_path):
    browser = (shutil.which("chromium") or shutil.which("chromium-browser")
               or shutil.which("google-chrome"))
    if browser is None:
        pytest.skip("no headless browser installed (Debian: apt-get install chromium)")
    page = tmp_path / "chart.html"
    page.write_text("<html><body style='margin:0'>"
                    + line_chart(TERMS, "loss terms", ylabel="loss", log_y=True)
                    + "</body></html>")
    shot = tmp_path / "chart.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        "--window-size=900,400", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    # The axes' right spine: the rightmost long dark vertical line; the legend lies beyond.
    dark = (rgb.sum(axis=-1) < 150).sum(axis=0)
    right_spine = int(np.nonzero(dark > 0.6 * dark.max())[0].max())
    in_legend = []
    for colour in COLOURS[:4]:
        target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        near = np.abs(rgb[:, right_spine + 3:] - target).sum(axis=-1) < 40
        if near.sum() >= 10:
            in_legend.append(colour)
    assert len(in_legend) == 4, f"legend colours right of the axes: {in_legend}"


def test_parameter_groups_sharing_a_learning_rate_are_drawn_once():
    from cmt_deeplab.demo.report import _merge_equal

    lrs = {"head_decay": [(0, 1.0), (5, 2.0)], "backbone_decay": [(0, 1.0), (5, 2.0)],
           "slow": [(0, 0.1), (5, 0.2)]}
    assert _merge_equal(lrs) == {"head_decay, backbone_decay": [(0, 1.0), (5, 2.0)],
                                 "slow": [(0, 0.1), (5, 0.2)]}
