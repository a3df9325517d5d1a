"""Fuzz: frame decoding (frames/decode.py) on random bytes, valid images truncated or
bit-flipped, and decompression bombs (hypothesis, bounded, no Ray).

Invariants: ``open_frame`` raises nothing but ``FrameReject`` (a classified reason), so
``decode_one`` never falls back to its generic "decode error" catch-all; bombs are refused
from the header, quickly, without decoding their pixels.
"""
from __future__ import annotations

import io
import json
import struct
import time
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from rayft.frames.decode import FrameReject, decode_one, open_frame

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNTS: dict[str, int] = {}
MAX_PIXELS, MIN_SIDE, SIZE = 4096 * 4096, 8, 32
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO"]
MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK"]


def _encode(mode: str, fmt: str, w: int, h: int, seed: int) -> bytes | None:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    try:
        im = im.convert(mode)
        buf = io.BytesIO()
        im.save(buf, fmt)
        return buf.getvalue()
    except (OSError, ValueError, KeyError):
        return None  # this mode cannot be saved in this format


def _check(tmp, data: bytes, surface: str, name: str = "frame") -> str:
    COUNTS[surface] = COUNTS.get(surface, 0) + 1
    p = tmp / name
    p.write_bytes(data)
    try:
        open_frame(p, MAX_PIXELS, MIN_SIDE, draft=SIZE)
    except FrameReject as e:
        assert str(e) and "\n" not in str(e)
    r = decode_one(str(p), SIZE, MAX_PIXELS, MIN_SIDE)
    assert not r["reject"].startswith("decode error"), r["reject"]
    if not r["reject"]:
        assert r["image"].shape == (SIZE, SIZE, 3) and r["image"].dtype == np.uint8
    return r["reject"]


@SETTINGS
@given(data=st.binary(max_size=512))
def test_random_bytes(tmp_path_factory, data):
    _check(tmp_path_factory.mktemp("im"), data, "random bytes")


@SETTINGS
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS), w=st.integers(1, 40), h=st.integers(1, 40),
       seed=st.integers(0, 2**16), cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)),
                                                                         max_size=4))
def test_truncated_and_bit_flipped_images(tmp_path_factory, mode, fmt, w, h, seed, cut, flips):
    data = _encode(mode, fmt, w, h, seed)
    if data is None:
        return
    tmp = tmp_path_factory.mktemp("im")
    _check(tmp, data, "valid images (modes x formats)")
    b = bytearray(data[:max(1, int(len(data) * cut))])
    _check(tmp, bytes(b), "truncated images")
    for pos, x in flips:
        b[min(len(b) - 1, int(len(b) * pos))] ^= x
    _check(tmp, bytes(b), "truncated + bit-flipped images")


def _png(w: int, h: int, idat: bytes, color_type: int = 2, depth: int = 8) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(w=st.integers(5000, 2**31 - 1), h=st.integers(5000, 2**31 - 1), kind=st.sampled_from(["png", "gif", "bmp", "zlib"]))
def test_bombs_are_refused_from_the_header(tmp_path_factory, w, h, kind):
    if kind == "png":
        data = _png(w, h, zlib.compress(b"\x00" * 1024))
    elif kind == "zlib":  # small file, huge declared image, highly compressible pixels
        w, h = 8192, 8192
        data = _png(w, h, zlib.compress(b"\x00" * (1 << 22), 9))
    elif kind == "gif":
        w, h = min(w, 65535), min(h, 65535)
        data = b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00" + b"," + struct.pack("<HHHH", 0, 0, w, h) \
            + b"\x00\x02\x02\x44\x01\x00;"
    else:
        w, h = min(w, 2**31 - 1), min(h, 2**31 - 1)
        data = b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0,
                                                                           0, 0)
    t0 = time.time()
    reason = _check(tmp_path_factory.mktemp("im"), data, "decompression bombs")
    assert reason, "a bomb was decoded"
    assert time.time() - t0 < 5, "bomb took too long to refuse"
    if w * h > MAX_PIXELS:
        assert reason.startswith(("too many pixels", "corrupt", "unreadable", "not an image")), reason


def test_zz_report_counts():
    print("\nfuzz image inputs:", json.dumps(COUNTS))
    assert sum(COUNTS.values()) >= 100
