"""`rayft frames segment`: character-only RGBA crops of every frame (background removed), on Ray Data.

The users' optional step 1. A segmentation model the user downloads once (e.g. an
anime-segmentation ISNet export) runs with onnxruntime in a pool of Ray Data actors; each actor
decodes its frames, predicts a foreground mask, and writes ``<output>/<episode>/<frame>.png``
(RGBA, alpha = mask, cropped to the mask's bounding box + ``segment.padding``). Frames where no
foreground is found are written nowhere and listed in ``no_foreground.jsonl``; unreadable
frames in ``rejects.jsonl``; ``segment_report.json`` has the counts (they add up to the frames
found). A rerun skips frames whose crop or no-foreground record exists. `embed`/`export`/`train`
take the output folder as their input like any folder of frames.

Model contract: one input, NCHW float32 RGB in [0, 1] at the model's size (its static input
shape, else ``segment.input_size``); one output (N, 1, H, W) or (N, H, W): foreground
probability (logits are passed through a sigmoid when values fall outside [0, 1]).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import _env
from ..config import ConfigError
from ..storage import atomic_write_json, write_jsonl


class Segmenter:
    """Ray Data actor: decode -> resize -> onnxruntime mask -> RGBA crop written to disk."""

    def __init__(self, model: str, input_size: int, threshold: float, min_foreground: float, padding: int,
                 output: str, max_pixels: int, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.sess = ort.InferenceSession(model, so, providers=providers)
        inp = self.sess.get_inputs()[0]
        self.name = inp.name
        hw = [d for d in inp.shape[2:4] if isinstance(d, int)]
        self.size = hw[0] if len(hw) == 2 else input_size
        if not self.size:
            raise ConfigError(f"segment.model {model}: input size is dynamic; set segment.input_size")
        self.threshold, self.min_fg, self.padding = threshold, min_foreground, padding
        self.output, self.max_pixels = Path(output), max_pixels

    def _mask(self, rgbs: list) -> list:
        from PIL import Image

        x = np.stack([np.asarray(im.resize((self.size, self.size), Image.Resampling.BILINEAR), np.float32) / 255.0
                      for im in rgbs]).transpose(0, 3, 1, 2)
        y = np.asarray(self.sess.run(None, {self.name: x})[0], dtype=np.float32)
        y = y.reshape(len(rgbs), self.size, self.size)
        if y.min() < 0 or y.max() > 1:
            y = 1.0 / (1.0 + np.exp(-y))
        return [np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize(im.size, Image.Resampling.BILINEAR))
                for m, im in zip(y, rgbs)]

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # checked on the header below
        n = len(batch["path"])
        status, reason, fg, out = [""] * n, [""] * n, [0.0] * n, [""] * n
        ims, idx = [], []
        for i, p in enumerate(batch["path"]):
            try:
                with Image.open(p) as im:
                    if im.width * im.height > self.max_pixels:
                        raise ValueError(f"{im.width}x{im.height} exceeds segment.max_image_pixels")
                    ims.append(im.convert("RGB"))
                idx.append(i)
            except Exception as e:  # noqa: BLE001 - one unreadable frame
                status[i], reason[i] = "rejected", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if ims:
            for i, im, m in zip(idx, ims, self._mask(ims)):
                on = m >= int(self.threshold * 255)
                frac = float(on.mean())
                fg[i] = round(frac, 5)
                if frac < self.min_fg:
                    status[i], reason[i] = "no_foreground", f"foreground {frac:.4f} < segment.min_foreground"
                    continue
                ys, xs = np.nonzero(on)
                p = self.padding
                box = (max(0, xs.min() - p), max(0, ys.min() - p), min(im.width, xs.max() + 1 + p),
                       min(im.height, ys.max() + 1 + p))
                rgba = im.copy()
                rgba.putalpha(Image.fromarray(np.where(on, m, 0).astype(np.uint8)))
                dst = self.output / batch["episode"][i] / (Path(batch["path"][i]).stem + ".png")
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}.png")
                rgba.crop(box).save(tmp)
                os.replace(tmp, dst)
                status[i], out[i] = "written", str(dst)
        return {"path": np.array(batch["path"], dtype=object), "episode": np.array(batch["episode"], dtype=object),
                "status": np.array(status, dtype=object), "reason": np.array(reason, dtype=object),
                "foreground": np.array(fg, dtype=np.float32), "out": np.array(out, dtype=object)}


def run_segment(cfg) -> str:
    """Driver: find frames, skip finished ones, Ray Data actor pool, report; returns the output dir."""
    from .run import discover

    s = cfg.segment
    if not s.output:
        raise ConfigError("segment.output (alias output=): required")
    if not s.model or not Path(s.model).is_file():
        raise ConfigError(f"segment.model: not a file: {s.model!r} (an ONNX segmentation model)")
    if not s.input or not Path(s.input).is_dir():
        raise ConfigError(f"segment.input (alias input=): not a directory: {s.input!r}")
    out = Path(s.output).resolve()
    episodes, ignored, list_errors = discover(s.input, s.extensions)
    prior_nofg = {r["path"] for r in _read(out / "no_foreground.jsonl")}
    rows, already = [], 0
    for ep, paths in episodes.items():
        for p in paths:
            if (out / ep / (Path(p).stem + ".png")).exists() or p in prior_nofg:
                already += 1
            else:
                rows.append({"path": p, "episode": ep})
    out.mkdir(parents=True, exist_ok=True)
    counts = {"written": 0, "no_foreground": 0, "rejected": 0}
    retry = {r["path"] for r in rows}  # unreadable frames are tried again; their old record goes
    nofg = _read(out / "no_foreground.jsonl")
    rejects = [r for r in _read(out / "rejects.jsonl") if r["path"] not in retry]
    t0 = time.time()
    if rows:
        started = _env.ray_start(log_to_driver=True)
        import ray
        from ray.data import ActorPoolStrategy

        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            actors = s.concurrency or (max(1, int(gpus)) if gpus >= 1 else 1)
            ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // s.batch_size, 200)))
            ds = ds.map_batches(Segmenter, batch_size=s.batch_size, compute=ActorPoolStrategy(size=actors),
                                num_cpus=s.actor_num_cpus, num_gpus=1 if gpus >= 1 else 0,
                                fn_constructor_kwargs=dict(model=str(Path(s.model).resolve()), input_size=s.input_size,
                                                           threshold=s.threshold, min_foreground=s.min_foreground,
                                                           padding=s.padding, output=str(out),
                                                           max_pixels=s.max_image_pixels, threads=s.threads))
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for p, ep, st, why, f in zip(b["path"], b["episode"], b["status"], b["reason"], b["foreground"]):
                    counts[str(st)] += 1
                    if st == "no_foreground":
                        nofg.append({"path": str(p), "episode": str(ep), "foreground": float(f)})
                    elif st == "rejected":
                        rejects.append({"path": str(p), "episode": str(ep), "reason": str(why)})
        finally:
            write_jsonl(out / "no_foreground.jsonl", nofg)
            write_jsonl(out / "rejects.jsonl", rejects)
            if started:
                ray.shutdown()
    report = {"input": str(Path(s.input).resolve()), "model": str(Path(s.model).resolve()),
              "frames": sum(len(v) for v in episodes.values()), "done_before": already, **counts,
              "no_foreground_total": len(nofg), "rejected_total": len(rejects), "ignored_files": dict(ignored),
              "unlisted_folders": list_errors, "seconds": round(time.time() - t0, 2)}
    atomic_write_json(out / "segment_report.json", report)
    print(f"frames segment: {report['frames']} frames: {counts['written']} crops written, {counts['no_foreground']} "
          f"without foreground, {counts['rejected']} unreadable, {already} done before", file=sys.stderr, flush=True)
    return str(out)


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
