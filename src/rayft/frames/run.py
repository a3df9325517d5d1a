"""`rayft frames embed`: discover episodes -> Ray Data decode tasks -> open_clip actor pool ->
sharded Parquet per episode, resumable with one completion marker per episode.

Output layout (``embed.output``)::

    embeddings/<episode-id>/part-00000.parquet   path, episode, frame_index, width, height, embedding
    _done/<episode-id>.json                     written last per episode: counts, rejects
    model.json                                  the model the embeddings came from
    rejects.jsonl, report.json                  every rejected frame with its reason; run totals

The driver streams results (``iter_batches``) and writes each episode's Parquet itself,
so an episode is marked done the moment its last frame arrives; a killed run loses at
most the episodes in flight, and a rerun skips every marked episode.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import _env
from ..config import ConfigError, to_dict
from ..data.formats import DataError
from ..storage import atomic_write_json, is_done, read_jsonl, write_jsonl
from .config import FramesConfig
from .decode import decode_batch, reason_kind
from .embed import ClipEmbedder, check_model, model_image_size
from .writer import EpisodeWriter, episode_id



def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def discover(root: str | Path, extensions: list[str]) -> tuple[dict[str, list[str]], Counter, dict[str, str]]:
    """Episodes under ``root``: {episode: sorted frame paths}, ignored files by extension,
    and {episode: error} for folders that could not be listed (they do not stop the rest)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"embed.input: not a directory: {root}")
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    episodes: dict[str, list[str]] = {}
    ignored: Counter = Counter()
    errors: dict[str, str] = {}

    def onerror(e: OSError) -> None:
        errors[os.path.relpath(e.filename, root) if e.filename else "?"] = f"cannot list: {e.strerror}"

    seen: set[str] = set()
    # followlinks: episode folders are often symlinks into other volumes; the realpath set
    # stops a link cycle from walking forever.
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        frames = []
        for f in filenames:
            if f.startswith("."):
                continue
            ext = os.path.splitext(f)[1].lower()
            if ext in exts:
                frames.append(f)
            elif dirpath != str(root):
                ignored[ext or "(none)"] += 1
        if frames:
            rel = os.path.relpath(dirpath, root)
            name = "_root" if rel == "." else Path(rel).as_posix()
            episodes[name] = [os.path.join(dirpath, f) for f in sorted(frames, key=_natural_key)]
    return dict(sorted(episodes.items())), ignored, errors


def _record_model(out: Path, cfg: FramesConfig, any_done: bool) -> None:
    meta = {"name": cfg.model.name, "pretrained": cfg.model.pretrained, "image_size": cfg.model.image_size,
            "seed": cfg.model.seed}
    p = out / "model.json"
    if p.exists() and any_done:
        old = json.loads(p.read_text())
        if {k: old.get(k) for k in meta} != meta:
            raise ConfigError(f"{out} holds embeddings from model {old}; this config uses {meta}. "
                              "Use a new embed.output (mixing models makes clusters meaningless)")
    atomic_write_json(p, {**to_dict(cfg.model), **meta})


def _progress(total: int, enabled: bool):
    """frames/s: a bar on a terminal, a line every 30 s in a job log (rayft.progress)."""
    from ..progress import bar

    return bar(total, "embed", "frame", enabled, file=sys.stderr)


def build_dataset(cfg: FramesConfig, todo: dict[str, list[str]], gpus: float):
    """The Ray Data pipeline: rows (path, episode, frame_index) -> decode -> CLIP actor pool.

    Input blocks hold ``4 * batch_size`` rows, not one episode each: a 5,000-frame episode
    as one block would be one serial task and ~750 MB of decoded pixels in flight. Decode
    runs as separate CPU tasks (spread over every node's cores) feeding the actors; the
    actors' memory reservation keeps Ray Data from fusing the two, which on GPU nodes
    would leave the GPU waiting on one process's JPEG decoding.
    """
    import ray
    from ray.data import ActorPoolStrategy

    e = cfg.embed
    device = e.device if e.device != "auto" else ("cuda" if gpus >= 1 else "cpu")
    actors = e.concurrency or (max(1, int(gpus)) if device == "cuda" else 1)
    paths = [p for ps in todo.values() for p in ps]
    eps = [ep for ep, ps in todo.items() for _ in ps]
    idx = np.concatenate([np.arange(len(ps), dtype=np.int32) for ps in todo.values()])
    table = pa.table({"path": paths, "episode": eps, "frame_index": idx})
    rows = max(e.batch_size, e.decode_batch_size) * 4
    size = model_image_size(cfg.model)
    ds = ray.data.from_arrow([table.slice(i, rows) for i in range(0, len(table), rows)])
    ds = ds.map_batches(decode_batch, batch_size=e.decode_batch_size, num_cpus=e.decode_num_cpus,
                        fn_kwargs={"size": size, "max_pixels": e.max_image_pixels, "min_side": e.min_side})
    mem = {"memory": int(e.actor_memory_gb * 2**30)} if e.actor_memory_gb else {}
    ds = ds.map_batches(ClipEmbedder, batch_size=e.batch_size, compute=ActorPoolStrategy(size=actors),
                        num_cpus=e.actor_num_cpus, num_gpus=1 if device == "cuda" else 0, **mem,
                        fn_constructor_kwargs={"model_cfg": to_dict(cfg.model), "device": device,
                                               "threads": e.threads, "actors": actors})
    return ds, {"device": device, "actors": actors, "image_size": size, "block_rows": rows}


def run_embed(cfg: FramesConfig) -> str:
    """`rayft frames embed`: returns the output directory (printed last by the CLI)."""
    _env.apply()
    e = cfg.embed
    if not e.input or not e.output:
        raise ConfigError("frames embed needs embed.input and embed.output (or input=DIR output=DIR)")
    out = Path(e.output)
    t0 = time.time()
    episodes, ignored, errors = discover(e.input, e.extensions)
    done_dir = out / "_done"
    skipped, todo = [], {}
    for ep, paths in episodes.items():
        marker = done_dir / (episode_id(ep) + ".json")
        if is_done(done_dir, marker.name) and json.loads(marker.read_text()).get("files") == len(paths):
            skipped.append(ep)
        else:
            todo[ep] = paths
    if e.max_episodes:
        todo = dict(list(todo.items())[: e.max_episodes])
    out.mkdir(parents=True, exist_ok=True)
    _record_model(out, cfg, bool(skipped))
    if todo:
        warning = check_model(cfg.model)
        if warning:
            print(f"frames embed: WARNING: {warning}", file=sys.stderr)
    for ep in todo:  # partial parts from a killed run are rewritten from scratch
        shutil.rmtree(out / "embeddings" / episode_id(ep), ignore_errors=True)
    total = sum(len(p) for p in todo.values())
    print(f"frames embed: {len(episodes)} episodes ({len(skipped)} already done, {len(todo)} to do, "
          f"{total} frames) -> {out}", file=sys.stderr)
    writer = EpisodeWriter(out, {ep: len(p) for ep, p in todo.items()}, e.rows_per_file)
    info: dict = {}
    run_error = ""
    if todo:
        import ray
        from ray.data import DataContext

        started = _env.ray_start(log_to_driver=True)
        ctx = DataContext.get_current()
        saved = ctx.max_errored_blocks, ctx.enable_progress_bars
        try:
            ctx.max_errored_blocks = e.max_errored_blocks
            ctx.enable_progress_bars = False  # our own bar counts frames, Ray's counts blocks
            ds, info = build_dataset(cfg, todo, ray.cluster_resources().get("GPU", 0))
            with _progress(total, e.progress) as bar:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    bar.update(writer.add(batch))
                    if "first_result_s" not in info:  # start-up (actors, model load) vs steady rate
                        info.update(first_result_s=round(time.time() - t0, 2), first_frames=sum(writer.got.values()))
                if "first_result_s" in info:
                    dt = time.time() - t0 - info["first_result_s"]
                    rest = sum(writer.got.values()) - info["first_frames"]
                    info["steady_frames_per_s"] = round(rest / dt, 3) if dt > 0 and rest > 0 else None
        except Exception as ex:  # noqa: BLE001 - finished episodes are already marked; report the rest
            run_error = f"{type(ex).__name__}: {ex}"
            print(f"frames embed: pipeline stopped: {run_error}", file=sys.stderr)
        finally:
            ctx.max_errored_blocks, ctx.enable_progress_bars = saved
            if started:
                ray.shutdown()
    seconds = time.time() - t0
    report = _report(e.input, out, episodes, skipped, todo, writer, ignored, errors, info, seconds, run_error)
    print(f"frames embed: {report['frames_embedded_this_run']} frames in {seconds:.1f}s "
          f"({report['frames_per_s']:.1f} frames/s), {report['frames_rejected']} rejected, "
          f"{len(report['episodes_incomplete'])} episodes incomplete", file=sys.stderr)
    if report["episodes_incomplete"]:  # non-zero exit for the job; finished episodes stay done
        raise DataError(f"{len(report['episodes_incomplete'])} of {len(todo)} episodes did not finish "
                        f"({run_error or 'see episodes_failed in report.json'}); the others are done and "
                        f"marked. Rerun the same command to retry only the unfinished ones. Report: "
                        f"{out / 'report.json'}")
    return str(out)


def _report(inp, out, episodes, skipped, todo, writer, ignored, errors, info, seconds, run_error) -> dict:
    markers = [json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))]
    rejects = [r for m in markers for r in m.get("rejects", [])]
    write_jsonl(out / "rejects.jsonl", rejects)
    conv = Counter()
    for m in markers:
        conv.update(m.get("converted", {}))
    incomplete = [ep for ep in todo if ep not in set(writer.finished)]
    this_run = sum(writer.got.values())
    report = {
        "input": str(Path(inp).resolve()),
        "episodes_found": len(episodes), "episodes_skipped_done": len(skipped),
        "episodes_done_this_run": len(writer.finished), "episodes_incomplete": incomplete,
        "episodes_failed": dict(writer.failed),
        "episode_errors": errors, "frames_found": sum(len(p) for p in episodes.values()),
        "frames_embedded": sum(m.get("embedded", 0) for m in markers),
        "frames_rejected": len(rejects),
        "reject_reasons": dict(Counter(reason_kind(r["reason"]) for r in rejects)),
        "converted_modes": dict(conv), "ignored_files_by_extension": dict(ignored),
        "frames_processed_this_run": this_run, "frames_embedded_this_run": sum(writer.embedded.values()),
        "seconds": round(seconds, 2), "frames_per_s": round(this_run / seconds, 2) if seconds > 0 else 0.0,
        "pipeline": info, "error": run_error,
    }
    atomic_write_json(out / "report.json", report)
    return report


def read_rejects(out: str | Path) -> list[dict]:
    return read_jsonl(Path(out) / "rejects.jsonl")
