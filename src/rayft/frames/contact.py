"""Contact sheets (one grid per cluster) and an overview of all clusters, drawn with PIL."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

BG = (24, 24, 28)
FG = (235, 235, 235)
ACCENT = (255, 196, 0)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def thumbnail(path: str | Path, size: int) -> Image.Image:
    """Letterboxed square thumbnail; a crossed grey tile if the frame cannot be read."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((size, size), Image.BICUBIC)
            tile = Image.new("RGB", (size, size), BG)
            tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
            return tile
    except Exception:  # noqa: BLE001 - one bad frame must not break the sheet
        tile = Image.new("RGB", (size, size), (80, 80, 80))
        d = ImageDraw.Draw(tile)
        d.line([(0, 0), (size, size)], fill=(160, 60, 60), width=3)
        d.line([(0, size), (size, 0)], fill=(160, 60, 60), width=3)
        return tile


def contact_sheet(paths: list[str], title: str, thumb: int = 128, cols: int = 0,
                  subtitle: str = "") -> Image.Image:
    """Grid of frames under a title bar; the first frame (the medoid) is outlined."""
    n = max(1, len(paths))
    cols = cols or min(n, max(1, math.ceil(math.sqrt(n * 16 / 9))))
    rows = math.ceil(n / cols)
    pad, head = 4, 44 if subtitle else 28
    w = cols * (thumb + pad) + pad
    sheet = Image.new("RGB", (max(w, 360), head + rows * (thumb + pad) + pad), BG)
    d = ImageDraw.Draw(sheet)
    d.text((pad + 2, 4), title, fill=FG, font=_font(16))
    if subtitle:
        d.text((pad + 2, 24), subtitle, fill=(170, 170, 170), font=_font(12))
    for i, p in enumerate(paths):
        x, y = pad + (i % cols) * (thumb + pad), head + (i // cols) * (thumb + pad)
        sheet.paste(thumbnail(p, thumb), (x, y))
        if i == 0:
            d.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], outline=ACCENT, width=2)
    return sheet


def overview(rows: list[tuple[str, list[str]]], thumb: int = 96, per_row: int = 6) -> Image.Image:
    """One row per cluster: a label cell, then up to ``per_row`` frames (medoid first)."""
    pad, label_w = 4, 170
    rows = rows or [("no clusters", [])]
    w = label_w + per_row * (thumb + pad) + pad
    im = Image.new("RGB", (w, len(rows) * (thumb + pad) + pad), BG)
    d = ImageDraw.Draw(im)
    for r, (label, paths) in enumerate(rows):
        y = pad + r * (thumb + pad)
        for line_no, line in enumerate(label.split("\n")[:4]):
            d.text((pad + 2, y + 4 + 16 * line_no), line, fill=FG if line_no == 0 else (170, 170, 170),
                   font=_font(14 if line_no == 0 else 11))
        for i, p in enumerate(paths[:per_row]):
            x = label_w + i * (thumb + pad)
            im.paste(thumbnail(p, thumb), (x, y))
            if i == 0:
                d.rectangle([x - 1, y - 1, x + thumb, y + thumb], outline=ACCENT, width=2)
    return im
