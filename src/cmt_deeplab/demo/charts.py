"""The report's line charts, drawn with matplotlib (Agg, no display) and embedded as SVG.

Each chart is an ``<img>`` with an SVG data URI rather than inline SVG: the page's CSS cannot
restyle it (inline, ``svg text`` rules recoloured the legend), and the browser counts it with
the report's other images. The legend sits outside the axes, so it never covers a curve, and
``bbox_inches="tight"`` keeps every tick label inside the picture.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cmt_deeplab.demo.html import escape

#: matplotlib's default cycle (tab10): distinct hues that stay apart in print.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f"]


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str = "step",
    ylabel: str | None = None,
    log_y: bool = False,
    size: tuple[float, float] = (6.4, 3.0),
) -> str:
    """An ``<img>`` tag of one chart of ``name -> [(x, y)]`` series (an empty-data note when
    there is nothing to draw)."""
    if not any(series.values()):
        return f"<p class='note'>{escape(title)}: no data.</p>"
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for index, (name, values) in enumerate(series.items()):
        xs, ys = zip(*values, strict=True) if values else ((), ())
        axes.plot(xs, ys, label=name, color=COLOURS[index % len(COLOURS)], linewidth=1.6,
                  marker="o" if len(values) == 1 else None)
    if log_y:
        axes.set_yscale("log")
    axes.set_title(title, loc="left", fontsize=11, fontweight="bold")
    axes.set_xlabel(xlabel)
    if ylabel:
        axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    axes.grid(True, color="#e5e5e5", linewidth=0.8)
    axes.set_axisbelow(True)
    if not log_y:
        axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    if len(series) > 1:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                    frameon=False, fontsize=9)
    return svg_image(figure, title)


def svg_image(figure: Figure, alt: str) -> str:
    """``figure`` as an ``<img>`` with an SVG data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", pad_inches=0.08,
                   metadata={"Date": None})  # no timestamp: the same run, the same page
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="chart" alt="{escape(alt)}" src="data:image/svg+xml;base64,{data}">'


__all__ = ["COLOURS", "line_chart", "svg_image"]
