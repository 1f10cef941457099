"""A self-contained HTML report: inline CSS, SVG charts and base64 images, nothing fetched."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

from PIL import Image

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; } figcaption { font-size: 0.8em; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #666; font-size: 0.88em; }
.good { color: #0a7d2c; font-weight: bold; } .bad { color: #b3261e; font-weight: bold; }
svg text { font-size: 11px; fill: #333; }
"""

# Records, for a test or a person, how many embedded images the browser decoded.
_IMAGE_CHECK = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(ok));
});
</script>
"""


def escape(text: object) -> str:
    return html.escape(str(text))


def image_tag(image: Image.Image, alt: str, fmt: str = "PNG", width: int | None = None) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img alt="{escape(alt)}" src="data:{mime};base64,{data}"{size}>'


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str = "step",
    width: int = 520,
    height: int = 260,
) -> str:
    """An SVG line chart of one or more ``(x, y)`` series."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    points = [p for values in series.values() for p in values]
    if not points:
        return f"<p class='note'>{escape(title)}: no data.</p>"
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 50, 10, 24, 34
    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)
    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="15" font-weight="bold">{escape(title)}</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" text-anchor="middle">{escape(xlabel)}</text>')
    for index, (name, values) in enumerate(series.items()):
        colour = colours[index % len(colours)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}"/>')
        if len(values) == 1:
            x, y = values[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{width - right - 4}" y="{top + 14 * (index + 1)}" text-anchor="end" '
                     f'fill="{colour}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}{_IMAGE_CHECK}</body></html>")
