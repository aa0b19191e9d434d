"""The unit atlas page: one card per filter, offline from the file system (no CDN, no server).

``write_atlas_page(atlas, out_dir)`` writes::

    out_dir/index.html       the page (a skeleton; the cards are drawn by atlas.js)
    out_dir/atlas.json       the data (``csg.atlas/1``) plus where each filter's tiles lie in the sheets
    out_dir/atlas.data.js    the same JSON as ``window.CSG_ATLAS = ...;`` (browsers refuse to fetch() a JSON
                             file from file://, a <script> they load)
    out_dir/atlas.js, atlas.css
    out_dir/sprites/<layer>-<kind>-NNN.png   sprite sheets: per filter one block of its top-k tiles

Tiles are drawn here (vectorised over every tile): the ActivMap overlay keeps the image inside the
region (ActivMap >= the filter's dataset top-q level), dims the rest under a navy wash, and rings the
region in amber;
the GradMap overlay blends the blurred gradient magnitude (magma colour map, scaled to the tile's maximum)
over the grey image and rings its region (GradMap > threshold) in cyan.
"""
from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import CsgError
from ..core.io import atomic_write_bytes, atomic_write_text

GAP = 2  # px between tiles in a sheet (white), so scaled tiles never bleed into their neighbours
PER_SHEET = 64  # filters per sheet: a sheet is 8 x 8 blocks
SHEET_COLUMNS = 8
ACTIV_RING = np.array([1.0, 0.72, 0.05], np.float32)
OUTSIDE_WASH = np.array([0.09, 0.13, 0.27], np.float32)
GRAD_RING = np.array([0.15, 0.9, 1.0], np.float32)
STATIC = ("atlas.js", "atlas.css")
AUTO_PNG_PIXELS = 8_000_000  # tile pixels of a layer (K x k x h x w) up to which "auto" writes PNG


def _static(name: str) -> str:
    return resources.files("csg.report").joinpath("static", name).read_text(encoding="utf-8")


def block_shape(k: int) -> tuple[int, int]:
    """Tiles per block (columns, rows) for ``k`` top images: as square as possible."""
    cols = max(1, math.ceil(math.sqrt(k)))
    return cols, max(1, math.ceil(k / cols))


# ---- drawing ---------------------------------------------------------------------------------------
def _rgb(images: np.ndarray) -> np.ndarray:
    """``... x c x H x W`` uint8 -> ``... x H x W x 3`` float32 in [0, 1] (grey repeated; >3 channels: first 3)."""
    x = np.moveaxis(images, -3, -1).astype(np.float32) / 255.0
    if x.shape[-1] == 1:
        return np.repeat(x, 3, axis=-1)
    if x.shape[-1] == 2:
        return np.concatenate([x, x[..., :1]], axis=-1)
    return x[..., :3]


def _ring(region: np.ndarray) -> np.ndarray:
    """Pixels just outside ``region`` (4-neighbour dilation minus the region), over the last two axes."""
    r = region
    grown = r.copy()
    grown[..., 1:, :] |= r[..., :-1, :]
    grown[..., :-1, :] |= r[..., 1:, :]
    grown[..., :, 1:] |= r[..., :, :-1]
    grown[..., :, :-1] |= r[..., :, 1:]
    return grown & ~r


def _magma() -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["magma"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)


def activ_overlay(images: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """RGB uint8 tiles: the image as it is inside the region (coverage >= 50%), dimmed grey under a navy wash
    outside it (so the outside stays visible on a black background), and an amber ring just outside."""
    rgb = _rgb(images)
    region = coverage >= 128
    grey = rgb.mean(axis=-1, keepdims=True)
    out = np.where(region[..., None], rgb, 0.4 * grey + OUTSIDE_WASH)
    out = np.where(_ring(region)[..., None], ACTIV_RING, out)
    return (out * 255 + 0.5).astype(np.uint8)


def grad_overlay(images: np.ndarray, grad: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """RGB uint8 tiles: magma(GradMap / its tile maximum) over the grey image, cyan ring around the region."""
    grey = _rgb(images).mean(axis=-1, keepdims=True)
    g = grad.astype(np.float32)
    top = g.reshape(*g.shape[:-2], -1).max(axis=-1)[..., None, None]
    level = np.clip(g / np.where(top > 0, top, 1.0), 0, 1)
    heat = _magma()[(level * 255).astype(np.int64)]
    out = 0.35 * grey + 0.65 * heat
    out = np.where(_ring(coverage >= 128)[..., None], GRAD_RING, out)
    return (out * 255 + 0.5).astype(np.uint8)


def sheets(tiles_rgb: np.ndarray, per_sheet: int = PER_SHEET, columns: int = SHEET_COLUMNS) -> list[np.ndarray]:
    """Pack ``K x k x h x w x 3`` tiles into sheets: filter ``f`` -> sheet ``f // per_sheet``, block
    ``j = f % per_sheet`` at block column ``j % columns``, row ``j // columns``; tile ``r`` of the block at
    column ``r % bc``, row ``r // bc``; ``GAP`` white pixels after every tile."""
    k, kk, h, w, _ = tiles_rgb.shape
    bc, br = block_shape(kk)
    pad = np.full((k, bc * br, h + GAP, w + GAP, 3), 255, np.uint8)
    pad[:, :kk, :h, :w] = tiles_rgb
    # K x br x bc x (h+g) x (w+g) x 3 -> blocks K x br*(h+g) x bc*(w+g) x 3
    blocks = pad.reshape(k, br, bc, h + GAP, w + GAP, 3).transpose(0, 1, 3, 2, 4, 5).reshape(
        k, br * (h + GAP), bc * (w + GAP), 3)
    out = []
    for s in range(0, k, per_sheet):  # a handful of sheets; each is one reshape
        part = blocks[s:s + per_sheet]
        n = part.shape[0]
        cols = min(columns, n)
        rows = math.ceil(n / cols)
        full = np.full((rows * cols,) + part.shape[1:], 255, np.uint8)
        full[:n] = part
        bh, bw = part.shape[1:3]
        out.append(full.reshape(rows, cols, bh, bw, 3).transpose(0, 2, 1, 3, 4).reshape(rows * bh, cols * bw, 3))
    return out


def _encode(sheet: np.ndarray, fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(sheet).save(buf, format="PNG", compress_level=6)
    else:
        Image.fromarray(sheet).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "layer"


def write_sprites(tiles: dict[str, np.ndarray], folder: Path, slug: str, fmt: str = "png",
                  per_sheet: int = PER_SHEET) -> dict:
    """Draw and write one layer's sheets; returns the ``sprites`` entry of atlas.json (paths relative to the page)."""
    k, kk, _c, h, w = tiles["image"].shape
    bc, br = block_shape(kk)
    ext = "png" if fmt == "png" else "jpg"
    entry = {"format": fmt, "tile": [h, w], "gap": GAP, "block": [bc, br], "per_sheet": per_sheet,
             "columns": SHEET_COLUMNS, "sheets": {}}
    kinds = {"activ": lambda s: activ_overlay(tiles["image"][s], tiles["activ_region"][s])}
    if "grad" in tiles:
        kinds["grad"] = lambda s: grad_overlay(tiles["image"][s], tiles["grad"][s], tiles["grad_region"][s])
    for kind, draw in kinds.items():
        paths = []
        for i, s in enumerate(range(0, k, per_sheet)):  # drawn sheet by sheet to bound memory
            sheet = sheets(draw(slice(s, s + per_sheet)), per_sheet)[0]
            rel = f"sprites/{slug}-{kind}-{i:03d}.{ext}"
            atomic_write_bytes(folder / rel, _encode(sheet, fmt))
            paths.append(rel)
        entry["sheets"][kind] = paths
    return entry


# ---- the page ---------------------------------------------------------------------------------------
INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="atlas.css">
</head>
<body>
<noscript><p class="noscript">The atlas draws its cards with JavaScript; allow scripts for this file.</p></noscript>
<div id="app" aria-live="polite"></div>
<script src="atlas.data.js"></script>
<script src="atlas.js"></script>
</body>
</html>
"""


def _json_text(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


def write_atlas_page(atlas, out_dir: str | Path, *, title: str | None = None, sprite_format: str = "auto") -> Path:
    """Write the atlas page for ``atlas`` (a :class:`csg.atlas.Atlas`) into ``out_dir``; returns index.html.

    ``sprite_format``: ``png`` (lossless), ``jpeg`` (quality 90, several times smaller on photographs and
    GradMap blends), or ``auto``: PNG for a layer of at most ``AUTO_PNG_PIXELS`` tile pixels, else JPEG.
    """
    if sprite_format not in ("auto", "png", "jpeg"):
        raise CsgError(f"--sprite-format must be auto, png or jpeg, got {sprite_format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "sprites").glob("*") if (out / "sprites").is_dir() else ():
        if old.is_file():  # sheets of an earlier build (another K or format) would linger unseen
            old.unlink()
    data = json.loads(json.dumps(atlas.data))  # a copy we may annotate
    used: set[str] = set()
    for layer in data["layers"]:
        slug = _slug(layer["name"])
        while slug in used:
            slug += "_"
        used.add(slug)
        tiles = atlas.tiles[layer["name"]]
        fmt = sprite_format
        if fmt == "auto":
            fmt = "png" if tiles["activ_region"].size <= AUTO_PNG_PIXELS else "jpeg"
        layer["sprites"] = write_sprites(tiles, out, slug, fmt)
    run = data.get("run") or {}
    data["title"] = title or f"Unit atlas: {run.get('label') or 'run'}"
    text = _json_text(data)
    atomic_write_text(out / "atlas.json", text + "\n")
    atomic_write_text(out / "atlas.data.js", "window.CSG_ATLAS = " + text + ";\n")
    for name in STATIC:
        atomic_write_text(out / name, _static(name))
    import html

    index = out / "index.html"
    atomic_write_text(index, INDEX.format(title=html.escape(data["title"])))
    return index


def page_size(out_dir: str | Path) -> dict[str, int]:
    """Bytes on disk of the page: ``total``, ``json`` (atlas.json), ``data_js``, ``sprites``, ``files``."""
    out = Path(out_dir)
    files = [p for p in out.rglob("*") if p.is_file()]
    sprites = sum(p.stat().st_size for p in files if p.parent.name == "sprites")
    return {"total": sum(p.stat().st_size for p in files), "json": (out / "atlas.json").stat().st_size,
            "data_js": (out / "atlas.data.js").stat().st_size, "sprites": sprites, "files": len(files)}


# ---- two atlases side by side -------------------------------------------------------------------------
def write_pair_page(path: str | Path, atlases: Sequence[tuple[str, str]]) -> Path:
    """A page showing two atlases side by side (``atlases``: (label, href relative to the page)).

    ``PAGE?left=I&right=J`` picks them; "link views" mirrors sort, class filter and search between them.
    """
    path = Path(path)
    items = [{"label": label, "href": href} for label, href in atlases]
    text = _static("atlas_pair.html").replace("/*ATLASES*/[]", json.dumps(items).replace("</", "<\\/"))
    atomic_write_text(path, text)
    return path


def atlas_links(runs: Sequence[tuple[str, Path]], out: Path) -> tuple[dict[str, str], Path | None]:
    """For ``csg compare``: ``{label: href}`` of the runs whose ``RUN/atlas/index.html`` exists (relative to
    ``out``), and the side-by-side page ``out/atlas_pair.html`` (written when there is at least one)."""
    import os

    hrefs = {}
    for label, run_path in runs:
        page = Path(run_path) / "atlas" / "index.html"
        if page.is_file():
            hrefs[label] = Path(os.path.relpath(page.resolve(), Path(out).resolve())).as_posix()
    if not hrefs:
        return hrefs, None
    return hrefs, write_pair_page(Path(out) / "atlas_pair.html", list(hrefs.items()))


def atlas_section(hrefs: dict[str, str], pair_page: Path | None, out: Path) -> str:
    """The comparison page's "Unit atlases" section: a link per run and the side-by-side page."""
    import html

    from . import html as H

    items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(label)}</a></li>' for label, href in hrefs.items())
    labels = list(hrefs)
    pair = ""
    if pair_page is not None:
        rel = pair_page.relative_to(out).as_posix()
        pair = (f'<p><a href="{html.escape(rel)}">Open two atlases side by side</a> '
                f'({html.escape(labels[0])} | {html.escape(labels[min(1, len(labels) - 1)])}; choose others in '
                "the page, or open <code>atlas_pair.html?left=I&amp;right=J</code>). "
                "With \u201clink views\u201d on, sorting, class filter and search act on both.</p>")
    return H.section("Unit atlases", f'<p class="note">One card per filter: top images with ActivMap regions, class '
                                     "by each criterion, MI, selectivity and ablation drop (<code>csg atlas RUN</code>)."
                                     f"</p><ul>{items}</ul>{pair}", anchor="atlases")
