"""`rayft frames export`: one training folder per character cluster.

``export.output``::

    cluster_000/<episode>__<frame>.jpg + .txt   frames (copy/symlink/hardlink) and captions: the
                                                training set, nothing else that looks like an image
    cluster_000/_SUCCESS                        written last; a rerun skips finished folders
    contact_sheets/cluster_000.png              the cluster's contact sheet: medoid first, then a
                                                sample (outside the folder, so a trainer that reads
                                                every image in it never trains on the sheet)
    clusters.json                               per cluster: size, episodes, medoid, tags,
                                                trigger; skipped (too small) clusters listed
    overview.png                                one row per cluster

Captions are ``<trigger>, tag, tag, tag``: the trigger token names the character, tags come
from CLIP zero-shot scoring of each frame's stored embedding against ``export.tags`` with
the text tower of the model that made the embeddings (read from its model.json). One
failing cluster is recorded and the others still export.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import ConfigError, from_dict
from ..storage import atomic_write_json, atomic_write_text, is_done, mark_done
from .contact import contact_sheet, overview
from .cluster.reduce import embeddings_from_arrow, l2_normalize


def _log(msg: str) -> None:
    print(f"frames export: {msg}", file=sys.stderr, flush=True)


def zero_shot(img: np.ndarray, text: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """CLIP zero-shot probabilities: softmax over tags of scale * cosine, (n, tags)."""
    logits = scale * l2_normalize(img) @ l2_normalize(text).T
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def tag_text(tag: str) -> str:
    """'a red character' -> 'red character' for captions."""
    return re.sub(r"^(a|an|the)\s+", "", tag.strip(), flags=re.I)


def caption(trigger: str, tags: list[str]) -> str:
    return ", ".join([trigger] + [tag_text(t) for t in tags])


def dest_name(episode: str, path: str, used: set[str]) -> str:
    """<episode>__<file name>, unique within the folder."""
    ep = re.sub(r"[^A-Za-z0-9._-]+", "_", episode).strip("._") or "frame"
    base = f"{ep}__{os.path.basename(path)}"
    name, i = base, 1
    while name in used:
        stem, ext = os.path.splitext(base)
        name, i = f"{stem}_{i}{ext}", i + 1
    used.add(name)
    return name


def place(src: str, dst: Path, mode: str) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
    elif mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError:  # across filesystems: fall back to a copy
            shutil.copy2(src, dst)
    else:
        shutil.copy2(src, dst)


def _model_for(emb_dir: Path, cfg):
    from .config import ModelSection

    for meta in (emb_dir / "model.json", emb_dir.parent / "model.json"):  # embed root or its embeddings/
        if meta.exists():
            data = json.loads(meta.read_text())
            return from_dict(ModelSection, {k: v for k, v in data.items() if k in ModelSection.model_fields})
    return cfg.model


def frame_tags(emb_dir: Path, paths: pa.Array, cfg) -> tuple[np.ndarray | None, list[str], str]:
    """Per frame (aligned with ``paths``) zero-shot tag probabilities, or None with a reason."""
    from .cluster.run import parquet_files
    from .embed import encode_texts, load_clip

    x = cfg.export
    if not x.tags:
        return None, [], "no tag vocabulary"
    model = _model_for(emb_dir, cfg)
    clip = load_clip(model, "cpu")
    text = encode_texts(clip, model.name, [x.tag_prompt.format(t) for t in x.tags])
    probs = np.zeros((len(paths), len(x.tags)), dtype=np.float32)
    found = np.zeros(len(paths), dtype=bool)
    for f in parquet_files(emb_dir):
        for rb in pq.ParquetFile(f).iter_batches(batch_size=65_536, columns=["path", "embedding"]):
            pos = pc.index_in(rb.column("path").cast(pa.string()), value_set=paths)  # null = not exported
            m = pos.is_valid().to_numpy(zero_copy_only=False)
            if not m.any():
                continue
            pos = pos.fill_null(0).to_numpy(zero_copy_only=False)
            e = embeddings_from_arrow(rb.column("embedding"))[m]
            if e.shape[1] != text.shape[1]:
                return None, [], (f"embedding dim {e.shape[1]} != text dim {text.shape[1]} of {model.name}: "
                                  "set export.embeddings / model.* to the model that made them")
            idx = pos[m].astype(np.int64)
            probs[idx] = zero_shot(e, text)
            found[idx] = True
    if not found.all():
        _log(f"{int((~found).sum())} exported frames have no stored embedding; their captions get no tags")
    return probs, list(x.tags), ""


def run_export(cfg) -> str:
    """`rayft frames export`: returns the output directory."""
    x = cfg.export
    if not x.input or not x.output:
        raise ConfigError("frames export needs export.input and export.output (or input=DIR output=DIR)")
    inp, out = Path(x.input), Path(x.output)
    if not (inp / "labels.parquet").exists() or not (inp / "clusters.json").exists():
        raise ConfigError(f"export.input: {inp} has no labels.parquet/clusters.json (run frames cluster first)")
    t0 = time.time()
    meta = json.loads((inp / "clusters.json").read_text())
    labels = pq.read_table(inp / "labels.parquet", columns=["path", "episode", "label"])
    lab = labels.column("label").to_numpy()
    sizes = {c["id"]: c for c in meta["cluster_list"]}
    keep = [c for c in meta["cluster_list"] if c["size"] >= x.min_size]
    skipped = [{"id": c["id"], "size": c["size"], "reason": f"size {c['size']} < export.min_size {x.min_size}"}
               for c in meta["cluster_list"] if c["size"] < x.min_size]
    sel = np.flatnonzero(np.isin(lab, [c["id"] for c in keep]))
    paths = labels.column("path").take(pa.array(sel)).combine_chunks()
    eps = labels.column("episode").take(pa.array(sel)).to_pylist()
    sel_lab = lab[sel]
    emb_dir = Path(x.embeddings or meta.get("input", ""))
    probs, vocab, tag_note = (None, [], "no embeddings directory")
    if emb_dir.is_dir() and len(sel):
        probs, vocab, tag_note = frame_tags(emb_dir, paths, cfg)
    if tag_note:
        _log(f"caption tags disabled: {tag_note}")
    out.mkdir(parents=True, exist_ok=True)
    wanted = {f"cluster_{c['id']:03d}" for c in keep}
    for old in out.glob("cluster_*"):  # folders of an earlier export whose cluster is gone
        if old.is_dir() and re.fullmatch(r"cluster_\d+", old.name) and old.name not in wanted:
            shutil.rmtree(old)
    for old in (out / "contact_sheets").glob("cluster_*.png"):
        if old.stem not in wanted:
            old.unlink()
    rng = np.random.default_rng(x.seed)
    path_list = paths.to_pylist()
    results, rows = [], []
    for c in keep:
        cid = c["id"]
        idx = np.flatnonzero(sel_lab == cid)
        info = dict(sizes[cid])
        info.update(folder=f"cluster_{cid:03d}", trigger=x.trigger.format(id=cid),
                    contact_sheet=f"contact_sheets/cluster_{cid:03d}.png")
        if probs is not None:
            mean = probs[idx].mean(0)
            info["tags"] = [vocab[t] for t in np.argsort(-mean)[: x.tags_per_cluster]]
        else:
            info["tags"] = []
        try:
            info.update(_export_cluster(out, info, [path_list[i] for i in idx], [eps[i] for i in idx],
                                        None if probs is None else probs[idx], vocab, x, rng))
        except Exception as ex:  # noqa: BLE001 - one failing character must not stop the others
            info["error"] = f"{type(ex).__name__}: {ex}"
            _log(f"cluster {cid} failed: {info['error']}")
        results.append(info)
        rows.append((f"{info['folder']}  {info['trigger']}\n{c['size']} frames, {c['episodes']} episodes\n"
                     + ", ".join(tag_text(t) for t in info["tags"][:3]), info.get("sample", [])))
    overview(rows[: x.overview_max_clusters], thumb=max(48, x.thumb_size * 3 // 4),
             per_row=x.overview_samples).save(out / ".overview.png.tmp.png")
    os.replace(out / ".overview.png.tmp.png", out / "overview.png")
    for r in results:
        r.pop("sample", None)
    summary = {"input": str(inp.resolve()), "embeddings": str(emb_dir), "mode": x.mode,
               "exported": len([r for r in results if "error" not in r]),
               "failed": [r["id"] for r in results if "error" in r], "skipped": skipped,
               "noise_frames": int((lab < 0).sum()), "tags_note": tag_note,
               "seconds": round(time.time() - t0, 2), "clusters": results}
    atomic_write_json(out / "clusters.json", summary)
    _log(f"{summary['exported']} cluster folders, {len(skipped)} skipped (too small), "
         f"{len(summary['failed'])} failed -> {out}")
    return str(out)


def _export_cluster(out: Path, info: dict, paths: list[str], eps: list[str], probs, vocab, x, rng) -> dict:
    folder = out / info["folder"]
    medoid = info.get("medoid")
    others = [p for p in paths if p != medoid]
    pick = rng.choice(len(others), size=min(len(others), max(0, x.sheet_samples - 1)), replace=False)
    sample = ([medoid] if medoid in paths else []) + [others[i] for i in sorted(pick)]
    members = hashlib.sha1("\n".join(paths).encode()).hexdigest()
    sig = {"frames": len(paths), "members": members, "trigger": info["trigger"], "mode": x.mode, "tags": vocab,
           "tags_per_frame": x.tags_per_frame}
    if is_done(folder) and json.loads((folder / "_SUCCESS").read_text()).get("sig") == sig:
        return {"exported_frames": len(paths), "resumed": True, "sample": sample}
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    used: set[str] = set()
    jobs = []
    for i, (p, ep) in enumerate(zip(paths, eps)):
        name = dest_name(ep, p, used)
        tags = [] if probs is None else [vocab[t] for t in np.argsort(-probs[i])[: x.tags_per_frame]]
        jobs.append((p, folder / name, caption(info["trigger"], tags)))

    def one(job) -> str:
        src, dst, cap = job
        try:
            place(src, dst, x.mode)
            atomic_write_text(dst.with_suffix(".txt"), cap + "\n")
            return ""
        except OSError as e:
            return f"{src}: {e}"

    with ThreadPoolExecutor(max_workers=x.workers) as pool:
        errors = [e for e in pool.map(one, jobs) if e]
    sub = f"{len(paths)} frames, {info['episodes']} episodes; tags: " + ", ".join(tag_text(t) for t in info["tags"][:4])
    sheet = out / "contact_sheets" / f"{info['folder']}.png"
    sheet.parent.mkdir(exist_ok=True)
    contact_sheet(sample, f"{info['folder']}  {info['trigger']}", thumb=x.thumb_size, subtitle=sub).save(
        sheet.with_name("." + sheet.name + ".tmp.png"))
    os.replace(sheet.with_name("." + sheet.name + ".tmp.png"), sheet)
    mark_done(folder, info={"sig": sig, "errors": errors[:100]})
    return {"exported_frames": len(paths) - len(errors), "failed_frames": errors[:100], "sample": sample}
