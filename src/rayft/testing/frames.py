"""Synthetic episodes of frames with recurring characters, plus bad files (tests and benchmarks).

Each character is a sprite with a fixed body shape, body colour, accent colour and
marking (eyes, stripe, hat); frames show it in varying pose (rotation, mirror), scale
and position over varied backgrounds (solid, gradient, stripes, noise). Some frames are
background only. Truth goes to ``truth.csv`` in the root (not an image, so discovery
ignores it): path, episode, frame_index, character (-1 = none), expected (ok | reject
reason kind | converted mode).
"""
from __future__ import annotations

import csv
import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "blob"]
MARKS = ["eyes", "stripe", "hat", "belly"]


@dataclass(frozen=True)
class Character:
    id: int
    shape: str
    body: tuple
    accent: tuple
    mark: str


def make_characters(n: int, seed: int = 0) -> list[Character]:
    """``n`` visually distinct characters (shape x colour scheme x marking)."""
    rng = random.Random(seed)
    out = []
    hues = [i / n for i in range(n)]
    rng.shuffle(hues)
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        body = _hsv(hues[i], 0.75 + 0.25 * rng.random(), 0.65 + 0.35 * rng.random())
        accent = _hsv((hues[i] + 0.5) % 1.0, 0.9, 0.3 + 0.6 * rng.random())
        out.append(Character(i, shape, body, accent, MARKS[(i // len(SHAPES)) % len(MARKS)]))
    return out


def _hsv(h: float, s: float, v: float) -> tuple:
    import colorsys
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def _polygon(shape: str, c: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(c - r, c - r), (c + r, c - r), (c + r, c + r), (c - r, c + r)]
    if shape == "triangle":
        return [(c + r * math.cos(a), c + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(c, c - r), (c + r * 0.7, c), (c, c + r), (c - r * 0.7, c)]
    if shape == "hexagon":
        return [(c + r * math.cos(k * math.pi / 3), c + r * math.sin(k * math.pi / 3)) for k in range(6)]
    if shape == "star":
        return [(c + (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5 - math.pi / 2),
                 c + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5 - math.pi / 2)) for k in range(10)]
    if shape == "cross":
        t = r * 0.38
        return [(c - t, c - r), (c + t, c - r), (c + t, c - t), (c + r, c - t), (c + r, c + t), (c + t, c + t),
                (c + t, c + r), (c - t, c + r), (c - t, c + t), (c - r, c + t), (c - r, c - t), (c - t, c - t)]
    return []


def sprite(ch: Character, size: int = 128) -> Image.Image:
    """The character in its canonical pose on a transparent canvas."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    c, r = size / 2, size * 0.42
    outline = tuple(max(0, v - 90) for v in ch.body)
    if ch.shape in ("circle", "blob"):
        box = [c - r, c - r, c + r, c + r] if ch.shape == "circle" else [c - r, c - r * 0.7, c + r, c + r]
        d.ellipse(box, fill=ch.body, outline=outline, width=max(2, size // 40))
        if ch.shape == "blob":  # ears
            d.ellipse([c - r, c - r, c - r * 0.4, c - r * 0.4], fill=ch.body, outline=outline)
            d.ellipse([c + r * 0.4, c - r, c + r, c - r * 0.4], fill=ch.body, outline=outline)
    else:
        d.polygon(_polygon(ch.shape, c, r), fill=ch.body, outline=outline, width=max(2, size // 40))
    if ch.mark == "stripe":
        d.rectangle([c - r * 0.6, c + r * 0.05, c + r * 0.6, c + r * 0.25], fill=ch.accent)
    elif ch.mark == "hat":
        d.polygon([(c - r * 0.45, c - r * 0.55), (c + r * 0.45, c - r * 0.55), (c, c - r * 1.15)], fill=ch.accent)
    elif ch.mark == "belly":
        d.ellipse([c - r * 0.35, c + r * 0.05, c + r * 0.35, c + r * 0.55], fill=ch.accent)
    e = r * 0.16  # everyone has eyes; the accent colours the pupils
    for ex in (c - r * 0.3, c + r * 0.3):
        d.ellipse([ex - e, c - r * 0.25 - e, ex + e, c - r * 0.25 + e], fill=(255, 255, 255))
        d.ellipse([ex - e / 2, c - r * 0.25 - e / 2, ex + e / 2, c - r * 0.25 + e / 2], fill=ch.accent)
    return im


def background(rng: random.Random, w: int, h: int) -> Image.Image:
    kind = rng.choice(["solid", "gradient", "stripes", "noise"])
    a = np.array(_hsv(rng.random(), 0.2 + 0.5 * rng.random(), 0.3 + 0.6 * rng.random()), dtype=np.float32)
    b = np.array(_hsv(rng.random(), 0.2 + 0.5 * rng.random(), 0.3 + 0.6 * rng.random()), dtype=np.float32)
    if kind == "solid":
        arr = np.broadcast_to(a, (h, w, 3))
    elif kind == "gradient":
        t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
        arr = np.broadcast_to(a * (1 - t) + b * t, (h, w, 3))
    elif kind == "stripes":
        period = rng.randint(6, 24)
        mask = ((np.arange(w) // period) % 2).astype(np.float32)[None, :, None]
        arr = np.broadcast_to(a * (1 - mask) + b * mask, (h, w, 3))
    else:
        nrng = np.random.default_rng(rng.randrange(2**31))
        arr = a + nrng.normal(0, 30, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def render_frame(rng: random.Random, ch: Character | None, w: int, h: int) -> Image.Image:
    """One frame: background plus (optionally) the character in a random pose."""
    im = background(rng, w, h)
    if ch is not None:
        side = int(min(w, h) * rng.uniform(0.45, 0.9))
        sp = sprite(ch, 128).rotate(rng.uniform(-30, 30), resample=Image.BICUBIC, expand=False)
        if rng.random() < 0.5:
            sp = sp.transpose(Image.FLIP_LEFT_RIGHT)
        sp = sp.resize((side, side), Image.BICUBIC)
        x, y = rng.randint(0, max(0, w - side)), rng.randint(0, max(0, h - side))
        im.paste(sp, (x, y), sp)
    return im


def _save(im: Image.Image, path: Path, fmt: str) -> None:
    if fmt == "jpg":
        im.save(path, "JPEG", quality=90)
    elif fmt == "webp":
        im.save(path, "WEBP", quality=85)
    else:
        im.save(path, "PNG")


def write_episodes(root: str | Path, n_episodes: int = 4, frames_per_episode: int = 50,
                   n_characters: int = 4, background_frac: float = 0.15, size: tuple = (160, 96),
                   seed: int = 0, formats: tuple = ("jpg", "png", "webp")) -> list[dict]:
    """Write ``root/episode_XXX/frame_XXXXXX.{jpg,png,webp}`` and ``root/truth.csv``.

    Main characters (low ids) appear in every episode and more often; later ones are
    rarer. Returns the truth rows.
    """
    root = Path(root)
    rng = random.Random(seed)
    chars = make_characters(n_characters, seed)
    weights = [1.0 / (1 + 0.3 * c.id) for c in chars]
    rows = []
    for e in range(n_episodes):
        ep = f"episode_{e:03d}"
        d = root / ep
        d.mkdir(parents=True, exist_ok=True)
        fmt = formats[e % len(formats)]
        for i in range(frames_per_episode):
            ch = None if rng.random() < background_frac else rng.choices(chars, weights)[0]
            p = d / f"frame_{i:06d}.{fmt}"
            _save(render_frame(rng, ch, *size), p, fmt)
            rows.append({"path": str(p), "episode": ep, "frame_index": i,
                         "character": -1 if ch is None else ch.id, "expected": "ok"})
    _write_truth(root, rows)
    return rows


def _write_truth(root: Path, rows: list[dict]) -> None:
    old = []
    tp = root / "truth.csv"
    if tp.exists():
        with open(tp, newline="") as f:
            old = [r for r in csv.DictReader(f) if r["path"] not in {x["path"] for x in rows}]
    with open(tp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["path", "episode", "frame_index", "character", "expected"])
        wr.writeheader()
        wr.writerows(old + rows)


def read_truth(root: str | Path) -> list[dict]:
    with open(Path(root) / "truth.csv", newline="") as f:
        return [dict(r, character=int(r["character"]), frame_index=int(r["frame_index"])) for r in csv.DictReader(f)]


def write_bad_frames(root: str | Path, episode: str = "episode_bad", seed: int = 0,
                     bomb_side: int = 10_000) -> list[dict]:
    """An episode of problem files: each row says what the pipeline must do with it.

    Rejects: zero-byte, text named .jpg, truncated JPEG, garbage after a PNG header,
    a decompression bomb (``bomb_side``^2 1-bit PNG, tiny on disk). Converted: L, LA,
    RGBA, P+transparency, CMYK, I;16. Plus one normal frame and a stray notes.txt.
    """
    rng = random.Random(seed)
    d = Path(root) / episode
    d.mkdir(parents=True, exist_ok=True)
    ch = make_characters(1, seed)[0]
    base = render_frame(rng, ch, 160, 96)
    rows = []

    def add(name: str, expected: str, character: int = -1):
        rows.append({"path": str(d / name), "episode": episode, "frame_index": len(rows),
                     "character": character, "expected": expected})

    (d / "a_empty.jpg").write_bytes(b"")
    add("a_empty.jpg", "empty file")
    (d / "b_text.jpg").write_text("this is not an image\n")
    add("b_text.jpg", "not an image")
    buf = io.BytesIO()
    base.save(buf, "JPEG", quality=90)
    (d / "c_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    add("c_truncated.jpg", "corrupt or truncated")
    buf = io.BytesIO()
    base.save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    raw[60:] = bytes(rng.randrange(256) for _ in range(len(raw) - 60))
    (d / "d_garbage.png").write_bytes(bytes(raw))
    add("d_garbage.png", "corrupt or truncated")
    Image.new("1", (bomb_side, bomb_side)).save(d / "e_bomb.png", optimize=True)
    add("e_bomb.png", "too many pixels")
    base.convert("L").save(d / "f_gray.jpg", "JPEG")
    add("f_gray.jpg", "L", 0)
    base.convert("LA").save(d / "g_gray_alpha.png")
    add("g_gray_alpha.png", "LA", 0)
    base.convert("RGBA").save(d / "h_rgba.png")
    add("h_rgba.png", "RGBA", 0)
    p = base.convert("P", palette=Image.ADAPTIVE, colors=64)
    p.info["transparency"] = 0
    p.save(d / "i_palette.png", transparency=0)
    add("i_palette.png", "P", 0)
    base.convert("CMYK").save(d / "j_cmyk.jpg", "JPEG")
    add("j_cmyk.jpg", "CMYK", 0)
    a16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(a16).save(d / "k_16bit.png")  # uint16 -> mode I;16
    add("k_16bit.png", "I;16", 0)
    base.save(d / "l_ok.png")
    add("l_ok.png", "ok", 0)
    (d / "notes.txt").write_text("not a frame; ignored by extension\n")
    _write_truth(Path(root), rows)
    return rows
