"""Tiny HTML building blocks: one self-contained page, inline CSS, nothing remote.

Pages link their images by relative path so they open from the file system.
A small inline script marks ``<body>`` with ``data-images`` /
``data-broken-images`` once the page has loaded, which headless-browser tests
(and a reader's eye, through the red outline) use to spot a missing figure.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import quote

CSS = """
:root { --fg:#1d232a; --muted:#5f6b76; --line:#d9dee3; --bg:#ffffff; --panel:#f6f8fa; --accent:#2f6fb0; }
* { box-sizing:border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width:1400px; margin:0 auto; padding:20px 24px 60px; }
header.top { border-bottom:1px solid var(--line); margin-bottom:16px; }
h1 { font-size:1.6em; margin:0.2em 0 0.1em; }
h2 { font-size:1.25em; margin:1.6em 0 0.5em; padding-bottom:4px; border-bottom:1px solid var(--line); }
h3 { font-size:1.05em; margin:1.2em 0 0.4em; }
.sub { color:var(--muted); margin:0 0 12px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:12px 0 16px; }
.card { background:var(--panel); border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:120px; }
.card .k { color:var(--muted); font-size:0.8em; text-transform:uppercase; letter-spacing:0.04em; }
.card .v { font-size:1.3em; font-weight:600; font-variant-numeric:tabular-nums; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(440px, 1fr)); gap:16px; }
.grid.wide { grid-template-columns:repeat(auto-fill, minmax(640px, 1fr)); }
figure { margin:0; background:var(--panel); border:1px solid var(--line); border-radius:6px; padding:8px; }
figure img { display:block; width:auto; max-width:100%; height:auto; margin:0 auto; background:#fff; }
figure img.broken { outline:3px solid #c0392b; min-height:40px; }
figcaption { color:var(--muted); font-size:0.88em; margin-top:6px; }
.missing { color:#c0392b; font-size:0.9em; padding:20px 8px; }
table { border-collapse:collapse; margin:8px 0 12px; font-size:0.92em; }
th, td { border:1px solid var(--line); padding:4px 9px; text-align:left; vertical-align:top; }
th { background:var(--panel); }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.ref td { color:var(--muted); font-style:italic; }
.scroll { overflow-x:auto; }
.note { color:var(--muted); font-size:0.9em; }
details pre { background:var(--panel); padding:10px; overflow-x:auto; font-size:0.85em; }
a { color:var(--accent); }
.pair { display:grid; grid-template-columns:repeat(auto-fit, minmax(300px, 1fr)); gap:12px; }
@media (max-width:700px) { .grid, .grid.wide { grid-template-columns:1fr; } main { padding:12px; } }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) { bad++; imgs[i].classList.add("broken"); }
  }
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(bad));
  document.body.setAttribute("data-loaded", "yes");
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table: floats to ``digits`` significant decimals, None/NaN as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    if isinstance(value, (list, tuple)):
        if len(value) > 12:
            return "[" + ", ".join(fmt(v, 3) for v in value[:12]) + f", … ({len(value)} values)]"
        return "[" + ", ".join(fmt(v, 3) for v in value) + "]"
    return str(value)


def rel_src(target: str | Path, page_dir: str | Path) -> str:
    """URL-quoted relative path from the page's folder to ``target`` (POSIX separators)."""
    rel = os.path.relpath(Path(target).resolve(), Path(page_dir).resolve())
    return quote(Path(rel).as_posix())


def figure(src_file: str | Path, page_dir: str | Path, caption: str, *, alt: str | None = None) -> str:
    """A captioned figure; a file that does not exist becomes a visible note, not a broken image."""
    src_file = Path(src_file)
    if not src_file.is_file():
        return (f'<figure><div class="missing">figure missing: {esc(src_file.name)}</div>'
                f"<figcaption>{esc(caption)}</figcaption></figure>")
    src = rel_src(src_file, page_dir)
    return (f'<figure><a href="{src}"><img src="{src}" alt="{esc(alt or caption)}"></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def grid(items: Iterable[str], *, wide: bool = False) -> str:
    items = list(items)
    if not items:
        return ""
    return f'<div class="grid{" wide" if wide else ""}">' + "".join(items) + "</div>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, row_classes: Sequence[str] | None = None,
          raw: bool = False) -> str:
    """A table; numbers are right-aligned. With ``raw`` the cells are trusted HTML strings."""
    out = ['<div class="scroll"><table><thead><tr>', "".join(f"<th>{esc(h)}</th>" for h in headers),
           "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            text = v if raw and isinstance(v, str) else esc(fmt(v))
            cells.append(f'<td class="num">{text}</td>' if num or (raw and _looks_numeric(v)) else f"<td>{text}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _looks_numeric(v: Any) -> bool:
    return isinstance(v, str) and bool(v) and (v[0].isdigit() or v[:1] in "-–+.")


def cards(items: Sequence[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(fmt(v))}</div></div>'
        for k, v in items) + "</div>"


def section(title: str, inner: str, *, anchor: str | None = None) -> str:
    aid = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{aid}><h2>{esc(title)}</h2>{inner}</section>"


def page(title: str, body: str, *, subtitle: str = "") -> str:
    """A complete, self-contained HTML document (inline CSS and script, no remote resources)."""
    sub = f'<p class="sub">{subtitle}</p>' if subtitle else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main><header class=\"top\"><h1>{esc(title)}</h1>{sub}</header>{body}</main>"
            f"<script>{SCRIPT}</script></body></html>\n")
