"""Pure frame tests (no Ray): bad files rejected with a reason or converted, episode
discovery, and the synthetic frame generator."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from rayft.testing import frames as synth
from rayft.frames.decode import decode_batch, decode_one, reason_kind
from rayft.frames.run import discover, episode_id

SIZE = 32
BIG = 50_000_000


def _decode(path, max_pixels=BIG, min_side=16):
    return decode_one(str(path), SIZE, max_pixels, min_side)


def test_every_bad_file_is_rejected_or_converted_as_planted(tmp_path):
    rows = synth.write_bad_frames(tmp_path)
    out = decode_batch({"path": np.array([r["path"] for r in rows], dtype=object)}, SIZE, BIG, 16)
    assert out["image"].shape == (len(rows), SIZE, SIZE, 3) and out["image"].dtype == np.uint8
    for i, r in enumerate(rows):
        if r["expected"] in ("empty file", "not an image", "corrupt or truncated", "too many pixels"):
            assert reason_kind(out["reject"][i]) == r["expected"], (r, out["reject"][i])
            assert not out["image"][i].any()  # a rejected row keeps its place, zero image
        else:
            assert out["reject"][i] == "", (r, out["reject"][i])
            assert out["converted"][i] == ("" if r["expected"] == "ok" else r["expected"])
            assert out["image"][i].std() > 5 and (out["width"][i], out["height"][i]) == (160, 96)


def test_sixteen_bit_and_grayscale_keep_their_brightness(tmp_path):
    g = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g8.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    a, b = _decode(tmp_path / "g8.png"), _decode(tmp_path / "g16.png")
    assert b["converted"].startswith("I")
    assert np.abs(a["image"].astype(int) - b["image"].astype(int)).max() <= 1
    assert (a["image"][..., 0] == a["image"][..., 2]).all()  # gray -> equal RGB channels


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    r = _decode(tmp_path / "clear.png")
    assert r["converted"] == "RGBA" and (r["image"] == 255).all()


def test_pixel_limit_follows_config(tmp_path):
    Image.new("RGB", (1200, 1000), (9, 9, 9)).save(tmp_path / "big.png")
    assert reason_kind(_decode(tmp_path / "big.png", max_pixels=1_000_000)["reject"]) == "too many pixels"
    assert _decode(tmp_path / "big.png", max_pixels=2_000_000)["reject"] == ""
    Image.new("RGB", (8, 40)).save(tmp_path / "thin.png")
    assert reason_kind(_decode(tmp_path / "thin.png")["reject"]) == "too small"


def test_unreadable_frame_is_a_reject(tmp_path):
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    assert reason_kind(_decode(tmp_path / "dangling.jpg")["reject"]) == "unreadable"


def test_discover_episodes(tmp_path):
    for ep, names in {"s01/e02": ["f10.jpg", "f2.jpg", "f1.PNG"], "s01/e01": ["a.webp"],
                      "other": ["x.jpg", "notes.txt", ".hidden.jpg"], ".cache": ["z.jpg"]}.items():
        (tmp_path / ep).mkdir(parents=True)
        for n in names:
            (tmp_path / ep / n).write_bytes(b"x")
    (tmp_path / "top.jpg").write_bytes(b"x")
    outside = tmp_path.parent / f"{tmp_path.name}_linked"
    outside.mkdir()
    (outside / "l1.jpg").write_bytes(b"x")
    os.symlink(outside, tmp_path / "linked")  # symlinked episode folders are followed
    os.symlink(tmp_path / "s01", tmp_path / "s01" / "loop")  # a cycle must not hang
    eps, ignored, errors = discover(tmp_path, ["jpg", "png", "webp"])
    assert list(eps) == ["_root", "linked", "other", "s01/e01", "s01/e02"]
    assert [os.path.basename(p) for p in eps["s01/e02"]] == ["f1.PNG", "f2.jpg", "f10.jpg"]  # natural order
    assert eps["other"] == [str(tmp_path / "other" / "x.jpg")]
    assert ignored == {".txt": 1} and errors == {}


def test_episode_ids_are_safe_and_distinct():
    a, b = episode_id("s01/e01"), episode_id("s01_e01")
    assert a != b and "/" not in a and a.startswith("s01_e01-")


def test_synthetic_episodes_record_truth(tmp_path):
    rows = synth.write_episodes(tmp_path, n_episodes=3, frames_per_episode=20, n_characters=3,
                                background_frac=0.2, size=(64, 48), seed=2)
    truth = synth.read_truth(tmp_path)
    assert len(truth) == 60 == len(rows) and all(os.path.exists(r["path"]) for r in truth)
    chars = [r["character"] for r in truth]
    assert set(chars) == {-1, 0, 1, 2} and 0 < chars.count(-1) < 30
    assert {os.path.splitext(r["path"])[1] for r in truth} == {".jpg", ".png", ".webp"}
    with Image.open(truth[0]["path"]) as im:
        assert im.size == (64, 48)
    # characters are visually distinct sprites (shape x colours x marking)
    sprites = [np.asarray(synth.sprite(c, 64).convert("RGB"), dtype=float) for c in synth.make_characters(3, 2)]
    assert all(np.abs(sprites[i] - sprites[j]).mean() > 5 for i in range(3) for j in range(i + 1, 3))
