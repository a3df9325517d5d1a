"""Decode, convert and resize frames; bad files become rejects with a reason, never errors.

Pure functions (no Ray): ``decode_batch`` is what the Ray Data decode tasks and the
plain DataLoader baseline both call, so the two are measured on identical work.
The resize matches open_clip's default eval preprocess (bicubic resize of the shorter
side, centre crop); normalisation happens in the embedder, on the batch tensor.
"""
from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated frame is rejected, not half-grey


#: What PIL's format plugins raise on forged or truncated input besides OSError.
_PIL_ERRORS = (SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError, KeyError)


class FrameReject(Exception):
    """A frame that cannot be used; ``str(e)`` is the reason recorded in rejects."""


def reason_kind(reason: str) -> str:
    """The category of a reject reason (text before the first ':'), for counting."""
    return reason.split(":", 1)[0]


def to_rgb(im: Image.Image) -> tuple[Image.Image, str]:
    """Convert any PIL mode to 8-bit RGB. Returns (image, original mode if converted else '')."""
    mode = im.mode
    if mode == "RGB":
        return im, ""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 257.0  # 16-bit -> 8-bit keeps full range
        else:  # 32-bit int/float: stretch to the observed range
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        g = np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g] * 3, axis=-1), "RGB"), mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent -> white
        return Image.alpha_composite(bg, rgba).convert("RGB"), mode
    return im.convert("RGB"), mode  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX ...


def open_frame(path: str | Path, max_pixels: int, min_side: int, draft: int = 0) -> tuple[Image.Image, int, int, str]:
    """Open and fully decode one frame as RGB.

    Returns (image, width, height, converted_from_mode). Raises FrameReject with a
    reason for empty, non-image, oversized (decompression bomb), tiny, truncated or
    corrupt files. ``draft`` lets JPEG decode at a reduced scale (>= draft px short side).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise FrameReject(f"unreadable: {e.strerror or e}") from None
    if size == 0:
        raise FrameReject("empty file: 0 bytes")
    # PIL's own bomb check (warning above MAX_IMAGE_PIXELS, error above twice that) follows
    # the configured limit, so raising max_pixels really admits bigger frames.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(p)
        except UnidentifiedImageError:
            raise FrameReject("not an image: unrecognised format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise FrameReject(f"too many pixels: {e}") from None
        except OSError as e:
            raise FrameReject(f"unreadable: {e}") from None
        except _PIL_ERRORS as e:  # a truncated/forged header (e.g. PPM: ValueError) - found by tests/test_fuzz_images.py
            raise FrameReject(f"corrupt or truncated: {type(e).__name__}: {e}") from None
        try:
            w, h = im.size
            if w * h > max_pixels:  # checked on the header, before any pixel is decoded
                raise FrameReject(f"too many pixels: {w}x{h} > {max_pixels} (decompression bomb guard)")
            if min(w, h) < min_side:
                raise FrameReject(f"too small: {w}x{h} < {min_side}px")
            if draft and im.format == "JPEG":
                s = draft / min(w, h)
                im.draft("RGB", (max(1, int(w * s + 0.5)), max(1, int(h * s + 0.5))))
            im.load()
            rgb, converted = to_rgb(im)
            rgb.load()
        except FrameReject:
            im.close()
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            im.close()
            raise FrameReject(f"too many pixels: {e}") from None
        except (OSError, MemoryError, *_PIL_ERRORS) as e:
            im.close()
            raise FrameReject(f"corrupt or truncated: {type(e).__name__}: {e}") from None
    if rgb is not im:
        im.close()
    return rgb, w, h, converted


def resize_center_crop(im: Image.Image, size: int) -> np.ndarray:
    """Bicubic resize of the shorter side to ``size`` then centre crop: uint8 (size, size, 3)."""
    w, h = im.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def decode_one(path: str, size: int, max_pixels: int, min_side: int) -> dict:
    """One frame -> {image, width, height, converted, reject}; never raises for bad files."""
    try:
        im, w, h, conv = open_frame(path, max_pixels, min_side, draft=size)
        arr = resize_center_crop(im, size)
        return {"image": arr, "width": w, "height": h, "converted": conv, "reject": ""}
    except FrameReject as e:
        return {"image": None, "width": 0, "height": 0, "converted": "", "reject": str(e)}
    except Exception as e:  # noqa: BLE001 - a frame must never take the job down
        return {"image": None, "width": 0, "height": 0, "converted": "",
                "reject": f"decode error: {type(e).__name__}: {e}"}


def decode_batch(batch: dict, size: int, max_pixels: int, min_side: int) -> dict:
    """Ray Data / DataLoader batch fn: adds image (N,size,size,3 uint8), width, height,
    converted and reject columns to a batch with a ``path`` column. Rejected rows keep
    their place (zero image, reason in ``reject``) so every discovered frame is accounted for."""
    paths = [str(p) for p in batch["path"]]
    n = len(paths)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    width = np.zeros(n, dtype=np.int32)
    height = np.zeros(n, dtype=np.int32)
    converted, reject = [], []
    for i, p in enumerate(paths):
        r = decode_one(p, size, max_pixels, min_side)
        if r["image"] is not None:
            images[i] = r["image"]
        width[i], height[i] = r["width"], r["height"]
        converted.append(r["converted"])
        reject.append(r["reject"])
    out = dict(batch)
    out.update(image=images, width=width, height=height,
               converted=np.array(converted, dtype=object), reject=np.array(reject, dtype=object))
    return out
