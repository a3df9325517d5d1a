"""`rayft frames segment` (issue 15, item 4): a tiny ONNX model exported here from a torch module
runs in Ray Data actors with onnxruntime; masks become RGBA crops; every frame is accounted for."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
pytest.importorskip("onnxruntime")


def red_is_foreground_onnx(path: Path, size: int = 32) -> None:
    """1x1 conv + sigmoid: pixels much redder than green/blue are foreground."""
    import torch

    m = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.Sigmoid())
    with torch.no_grad():
        m[0].weight[:] = torch.tensor([20.0, -10.0, -10.0]).view(1, 3, 1, 1)
        m[0].bias[:] = -4.0
    torch.onnx.export(m, (torch.zeros(1, 3, size, size),), str(path), input_names=["img"], output_names=["mask"],
                      dynamic_axes={"img": {0: "n"}, "mask": {0: "n"}}, dynamo=False)


def frame(path: Path, box=None) -> None:
    from PIL import Image

    a = np.full((48, 64, 3), (200, 200, 200), np.uint8)
    if box:
        x0, y0, x1, y1 = box
        a[y0:y1, x0:x1] = (230, 20, 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_segment_masks_crops_and_counts(tmp_path, ray_session):
    from PIL import Image

    from rayft.cli import main

    model = tmp_path / "seg.onnx"
    red_is_foreground_onnx(model)
    src, out = tmp_path / "frames", tmp_path / "layers"
    for i in range(5):
        frame(src / "ep01" / f"f{i:03d}.png", box=(16 + i, 8, 40 + i, 32))
    frame(src / "ep02" / "empty.png")  # no foreground
    frame(src / "ep02" / "f001.png", box=(0, 0, 64, 48))
    (src / "ep02" / "broken.png").write_bytes(b"not a png")
    args = ["frames", "segment", f"input={src}", f"output={out}", f"segment.model={model}", "segment.padding=0",
            "segment.batch_size=3"]
    assert main(args) == 0
    rep = json.loads((out / "segment_report.json").read_text())
    assert (rep["frames"], rep["written"], rep["no_foreground"], rep["rejected"]) == (8, 6, 1, 1)
    assert rep["written"] + rep["no_foreground"] + rep["rejected"] + rep["done_before"] == rep["frames"]
    nofg = [json.loads(x) for x in (out / "no_foreground.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in nofg] == ["empty.png"]
    rej = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in rej] == ["broken.png"] and "\n" not in rej[0]["reason"]
    crop = Image.open(out / "ep01" / "f000.png")
    assert crop.mode == "RGBA"
    a = np.asarray(crop)
    # cropped to the red box (24x24, +-1 px of mask resampling), alpha on inside, colour kept
    assert abs(crop.width - 24) <= 2 and abs(crop.height - 24) <= 2, crop.size
    assert a[crop.height // 2, crop.width // 2, 3] > 200 and tuple(a[crop.height // 2, crop.width // 2, :3]) == (230, 20, 20)
    assert not (out / "ep02" / "empty.png").exists() and not (out / "ep02" / "broken.png").exists()
    # rerun: nothing new to do except the unreadable frame, which is tried again
    assert main(args) == 0
    rep2 = json.loads((out / "segment_report.json").read_text())
    assert rep2["done_before"] == 7 and rep2["written"] == 0 and rep2["rejected"] == 1
