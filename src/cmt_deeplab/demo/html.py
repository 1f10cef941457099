"""A self-contained HTML report: inline CSS and base64 images (charts: ``demo.charts``),
nothing fetched."""

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
img.chart { border: none; display: block; margin: 0.4em 0; }
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


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body>{body}{_IMAGE_CHECK}</body></html>")
