"""TrainConfig -> a Ray Train TorchTrainer run -> a run directory.

What can fail on bad input (config, missing files, unknown format, a file without a
valid row, model name, memory/DeepSpeed preflight) is checked on the driver BEFORE Ray
starts, so the user gets one clear message. Then Ray Data reads the rows (bad rows ->
rejects), and tokenizes them.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import _env
from ..config import ConfigError, to_dict
from ..data.formats import DataError, ReadResult, check_pairs
from ..data.ray_read import read_pairs_ray
from ..data.records import content_hash, rows_to_table, split_of
from ..storage import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from .config import TrainConfig


@dataclass
class Prepared:
    run_dir: Path
    source: str
    train_table: object
    val_table: object
    read: ReadResult
    stats: dict


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(os.path.expanduser(cfg.run.dir)) / cfg.run.name


def check_inputs(cfg: TrainConfig) -> str:
    """What must fail before Ray starts, on the driver: every data file exists, the
    format is known, each file has a valid row (read only up to it); the model
    resolves. Returns the model source."""
    from ..models.load import ModelError, resolve_source

    check_pairs(cfg.data.path, cfg.data.format)
    if cfg.data.val_path:
        check_pairs(cfg.data.val_path, cfg.data.format)
    try:
        return resolve_source(cfg.model.name)
    except ModelError as e:
        raise ConfigError(str(e)) from None


def prepare(cfg: TrainConfig, read=None, source: str | None = None) -> Prepared:
    """Check, read, validate and split the data; resolve the model.

    ``read`` defaults to ``read_pairs_ray`` (Ray Data tasks; needs a running Ray);
    ``formats.read_pairs`` reads in this process (the plain-loop benchmark's baseline).
    """
    source = source or check_inputs(cfg)
    read = read or read_pairs_ray
    res = read(cfg.data.path, cfg.data.format)
    rows = res.rows
    lang_skipped = 0
    if cfg.data.language:
        keep = [r for r in rows if r["language"] == cfg.data.language]
        for r in rows:
            if r["language"] != cfg.data.language:
                res.rejects.append({"file": r["file"], "line": r["line"],
                                    "reason": f"language {r['language']!r} != data.language {cfg.data.language!r}",
                                    "record": {"prompt": r["prompt"], "response": r["response"]}})
        lang_skipped = len(rows) - len(keep)
        rows = keep
        res.rows = rows
        if not rows:
            raise DataError(f"data.language={cfg.data.language!r}: no rows of that language in {cfg.data.path}")
    if cfg.data.val_path:
        val_res = read(cfg.data.val_path, cfg.data.format)
        train_rows, val_rows = rows, val_res.rows
        res.rejects.extend(val_res.rejects)
    else:
        train_rows, val_rows = [], []
        for r in rows:
            h = content_hash(r["system"], r["history"], r["prompt"], r["response"])
            (val_rows if split_of(h, cfg.data.val_fraction, str(cfg.run.seed)) == "val" else train_rows).append(r)
    need = cfg.scaling.num_workers * cfg.train.batch_size
    if len(train_rows) < need:
        raise DataError(f"{len(train_rows)} training rows after the split; need at least "
                        f"scaling.num_workers x train.batch_size = {need}")
    for i, r in enumerate(train_rows):
        r["row_idx"] = i
    for i, r in enumerate(val_rows):
        r["row_idx"] = i
    run_dir = run_dir_of(cfg)
    stats = {"rows_read": res.rows_read + (len(val_rows) if cfg.data.val_path else 0),
             "rows_rejected": len(res.rejects), "rows_other_language": lang_skipped,
             "train_rows": len(train_rows), "val_rows": len(val_rows), "files": res.files}
    return Prepared(run_dir, source, _table(train_rows), _table(val_rows), res, stats)


def _table(rows: list[dict]):
    import pyarrow as pa

    t = rows_to_table([{k: v for k, v in r.items() if k != "row_idx"} for r in rows])
    return t.append_column("row_idx", pa.array([r["row_idx"] for r in rows], pa.int64()))


def _ray_datasets(p: Prepared, cfg: TrainConfig) -> dict:
    """Tokenize with Ray Data and split by position, on the driver, before workers start.

    Splitting here (not in the trainer) matters twice: worker i always gets the same
    rows, so a resumed run sees the same data per worker (Ray's default streaming_split
    hands blocks to whichever worker asks first); and the tokenize tasks run while the
    CPUs are still free (once the workers hold every CPU, Ray Data tasks would starve).
    Train splits are equal-sized: at most num_workers - 1 rows unused, reported.
    """
    import ray.data

    from ..data.tokenize import tokenize_batch

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    kw = dict(source=p.source, max_seq_len=cfg.data.max_seq_len, system_prompt=cfg.data.system_prompt,
              trust_remote_code=cfg.model.trust_remote_code)
    n = cfg.scaling.num_workers
    full, parts = {}, {}
    for name, table in (("train", p.train_table), ("val", p.val_table)):
        if table.num_rows == 0:
            continue
        blocks = max(1, min(2 * n, table.num_rows // 512 + 1))
        ds = ray.data.from_arrow(table).repartition(blocks).map_batches(
            tokenize_batch, fn_kwargs=kw, batch_format="pyarrow", batch_size=512).materialize()
        full[name] = ds
        parts[name] = ds.split(n, equal=(name == "train"))
    return full, parts


def _data_config(parts: dict):
    from ray.train import DataConfig

    class PreSplit(DataConfig):
        """Worker i gets piece i of each dataset, split on the driver (see _ray_datasets)."""

        def __init__(self, parts):
            super().__init__()
            self.parts = parts

        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name in datasets:
                pieces = self.parts[name]
                if len(pieces) != world_size:
                    raise RuntimeError(f"dataset {name} was split {len(pieces)} ways for {world_size} workers")
                for i, piece in enumerate(pieces):
                    out[i][name] = piece.iterator()
            return out

    return PreSplit(parts)


class _Progress(threading.Thread):
    """Driver-side progress bar fed by the metrics rank 0 appends to metrics.jsonl."""

    def __init__(self, path: Path, total: int, start: int):
        super().__init__(daemon=True)
        from tqdm import tqdm

        self.path, self.stop_evt = path, threading.Event()
        self.bar = tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)

    def run(self) -> None:
        while not self.stop_evt.wait(1.0):
            self.update()
        self.update()
        self.bar.close()

    def update(self) -> None:
        rows = [r for r in read_jsonl(self.path) if "loss" in r]
        if rows:
            last = rows[-1]
            self.bar.n = min(last["step"], self.bar.total)
            self.bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['lr']:.2e}",
                                 tok_s=f"{last['tokens_per_s']:.0f}", refresh=False)
            self.bar.refresh()


def _check_resources(cfg: TrainConfig) -> None:
    import ray

    res = ray.cluster_resources()
    need_cpu = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if need_cpu > res.get("CPU", 0) + 1e-9:
        raise ConfigError(f"scaling: {cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker} CPU = "
                          f"{need_cpu:g} CPUs, but the cluster has {res.get('CPU', 0):g}; lower "
                          "scaling.num_workers or scaling.cpus_per_worker (fractions allowed)")
    if cfg.scaling.use_gpu and cfg.scaling.num_workers > res.get("GPU", 0):
        raise ConfigError(f"scaling.use_gpu: {cfg.scaling.num_workers} GPUs needed, cluster has {res.get('GPU', 0):g}")
    mem = cfg.scaling.memory_per_worker_gb * 2**30 * cfg.scaling.num_workers
    if mem > res.get("memory", 0):
        raise ConfigError(f"scaling.memory_per_worker_gb: {mem / 2**30:.1f} GB needed, cluster has "
                          f"{res.get('memory', 0) / 2**30:.1f} GB")


def compact_malloc(cfg: TrainConfig) -> bool:
    """memory.malloc resolved: compact under a memory budget or DeepSpeed, else glibc's default."""
    m = cfg.memory.malloc
    return m == "compact" or (m == "auto" and (cfg.memory.budget_gb > 0 or cfg.train.strategy != "ddp"))


def fit(cfg: TrainConfig, p: Prepared, datasets: tuple | None = None, callbacks: list | None = None,
        checked=None):
    """Run the TorchTrainer; returns the Ray Train Result.

    ``datasets`` (``_ray_datasets`` output) and ``callbacks`` (Ray Train UserCallbacks) are
    for `rayft sweep`: data tokenized once by the sweep driver, metrics forwarded to Tune.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .loop import train_loop_per_worker

    from .preflight import preflight

    checked = checked if checked is not None else preflight(cfg, p.source, p.run_dir.resolve())
    _check_resources(cfg)
    res = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.memory_per_worker_gb:
        res["memory"] = int(cfg.scaling.memory_per_worker_gb * 2**30)
    full, parts = datasets if datasets is not None else _ray_datasets(p, cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "source": p.source, "run_dir": str(p.run_dir.resolve()),
                           "deepspeed": checked.ds_config},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker=res),
        run_config=RunConfig(
            name="checkpoints", storage_path=str(p.run_dir.resolve()),
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # DeepSpeed picks its accelerator from DS_ACCELERATOR: decided by the WORKERS' device,
            # not the driver's (a CPU-only head submitting to GPU workers must not pass "cpu")
            worker_runtime_env={"env_vars": dict(_env.worker_env(compact_malloc(cfg)),
                                                 DS_ACCELERATOR="cuda" if cfg.scaling.use_gpu else "cpu")},
            callbacks=callbacks),
        datasets=full,
        dataset_config=_data_config(parts),
    )
    return trainer.fit()


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    cands = sorted((run_dir / "checkpoints").glob("step_*/state.json"))
    return cands[-1].parent if cands else None


def sample_generate(run_dir: Path, source: str, cfg: TrainConfig) -> str:
    """Reload the saved adapter (or full model) from disk and answer the sample prompt."""
    import torch

    from ..data.tokenize import prompt_text
    from ..models.load import load_model, load_tokenizer

    tok = load_tokenizer(source, cfg.model.trust_remote_code)
    if cfg.train.method == "lora":
        from peft import PeftModel
        base = load_model(source, tok, "float32", cfg.model.trust_remote_code, cfg.run.seed)
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    else:
        model = load_model(str(run_dir / "model"), tok, "float32")
    model.eval()
    text = prompt_text(tok, cfg.data.system_prompt, "", cfg.generate.prompt)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=cfg.generate.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def run_training(cfg: TrainConfig, prepared: Prepared | None = None, datasets: tuple | None = None,
                 callbacks: list | None = None) -> str:
    """`rayft train`: returns the run directory (printed last by the CLI).

    The optional arguments are for `rayft sweep` trials (see ``fit``); ``prepared`` is
    ``prepare(cfg)``'s result, computed once on the sweep driver.
    """
    _env.apply()
    t_start = time.time()
    run_dir = prepared.run_dir if prepared is not None else run_dir_of(cfg)
    source = prepared.source if prepared is not None else check_inputs(cfg)  # bad files/model: before Ray
    from .preflight import preflight
    checked = preflight(cfg, source, run_dir.resolve())  # memory/DeepSpeed refusals: before Ray starts
    _env.ray_start(log_to_driver=True)
    p = prepared if prepared is not None else prepare(cfg, source=source)  # read + tokenize-ready tables, with Ray Data
    if cfg.run.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    import yaml
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    write_jsonl(run_dir / "rejects.jsonl", p.read.rejects)
    prev = latest_checkpoint_dir(run_dir)
    start_step = json.loads((prev / "state.json").read_text())["step"] if prev else 0
    print(f"[rayft] run {run_dir} | {p.stats['train_rows']} train / {p.stats['val_rows']} val rows, "
          f"{p.stats['rows_rejected']} rejected | model {cfg.model.name} | "
          f"{cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker:g} CPU"
          + (f" | resuming from step {start_step}" if prev else ""), file=sys.stderr)

    bar = _Progress(run_dir / "metrics.jsonl", cfg.train.max_steps, start_step)
    bar.start()
    try:
        result = fit(cfg, p, datasets, callbacks, checked)
    finally:
        bar.stop_evt.set()
        bar.join(timeout=5)
    if result.error:
        raise RuntimeError(f"training failed: {result.error}") from result.error

    rows = read_jsonl(run_dir / "metrics.jsonl")
    events = [r for r in rows if "event" in r]           # the training guard's
    metrics = [r for r in rows if "event" not in r]
    diverged = next((e for e in events if e["event"] == "nonfinite_stop"), None)
    ck = latest_checkpoint_dir(run_dir)
    if ck is None and not diverged:
        raise RuntimeError(f"training finished without a checkpoint under {run_dir / 'checkpoints'}")
    state = json.loads((ck / "state.json").read_text()) if ck else {"step": 0}
    sub = "adapter" if cfg.train.method == "lora" else "model"
    if ck and not diverged:
        _publish(ck / sub, run_dir / sub)
        _publish(ck / "tokenizer", run_dir / "tokenizer")

    report = build_report(cfg, p, metrics, state, time.time() - t_start, start_step)
    report["guard"] = {"rollbacks": sum(e["event"] == "nonfinite_rollback" for e in events),
                       "lr_scale": (state.get("guard") or {}).get("lr_scale", 1.0),
                       "warnings": sum(e["event"] == "val_loss_rising" for e in events),
                       "stopped": diverged, "events": events}
    if diverged:
        report["finished"] = False
        atomic_write_json(run_dir / "report.json", report)
        raise TrainingDiverged(f"{diverged['message']} (guard.max_rollbacks={cfg.guard.max_rollbacks}); "
                               f"last healthy checkpoint: {ck or 'none'}; try a lower train.lr. "
                               f"Report: {run_dir / 'report.json'}")
    report["memory"] = dict(checked.report(), budget_gb=cfg.memory.budget_gb, stopped=state.get("stopped"))
    from .plot import plot_loss
    plot_loss(metrics, run_dir / "loss.png", f"{cfg.model.name} {cfg.train.method} - {run_dir.name}")
    if cfg.generate.prompt and state["step"] >= cfg.train.max_steps:
        report["sample"] = {"prompt": cfg.generate.prompt, "answer": sample_generate(run_dir, p.source, cfg)}
        print(f"[rayft] sample prompt: {cfg.generate.prompt}\n[rayft] answer (reloaded from {run_dir / sub}): "
              f"{report['sample']['answer']}", file=sys.stderr)
    atomic_write_json(run_dir / "report.json", report)
    print(f"[rayft] loss {report['loss_first']:.4f} -> {report['loss_last']:.4f} | val loss "
          f"{_f(report['val_loss_start'])} -> {_f(report['val_loss'])} | {report['tokens_per_s']:.0f} tokens/s | "
          f"peak RSS per worker {', '.join(f'{x:.0f}' for x in report['peak_rss_mb'])} MB | "
          f"{report['wall_s']:.0f} s", file=sys.stderr)
    if state.get("stopped"):  # the memory watchdog stopped it: resumable, but not a success
        from .memory import MemoryBudgetError
        from .watchdog import stop_message
        st = state["stopped"]
        raise MemoryBudgetError(stop_message(st["rank"], st["rss_mb"] * 2**20, st["budget_gb"], st["stop_fraction"],
                                             state["step"], str(ck)))
    return str(run_dir)


class TrainingDiverged(ConfigError):
    """The loss stayed NaN/Inf after guard.max_rollbacks rollbacks: the recipe needs changing."""


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _publish(src: Path, dst: Path) -> None:
    """Copy a directory into place atomically (copy to a temp name, then rename)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def build_report(cfg: TrainConfig, p: Prepared, metrics: list[dict], state: dict, wall: float,
                 start_step: int) -> dict:
    train_m = [m for m in metrics if "loss" in m]
    vals = [m for m in metrics if m.get("val_loss") is not None]
    tok_s = [m["tokens"] / m["window_s"] for m in train_m if m.get("window_s")]
    tot_tokens = sum(m["tokens"] for m in train_m)
    tot_time = sum(m["window_s"] for m in train_m)
    peaks: list[float] = []
    for m in train_m:
        peaks = [max(a, b) for a, b in zip(peaks, m["peak_rss_mb"])] if peaks else list(m["peak_rss_mb"])
    rows_unused = p.stats["train_rows"] % cfg.scaling.num_workers
    return {
        "run_dir": str(p.run_dir), "rows_read": p.stats["rows_read"], "rows_rejected": p.stats["rows_rejected"],
        "rows_kept": p.stats["train_rows"] + p.stats["val_rows"],
        "rows_other_language": p.stats["rows_other_language"],
        "train_rows": p.stats["train_rows"], "val_rows": p.stats["val_rows"],
        "train_rows_unused_for_equal_shards": rows_unused,
        "steps": state["step"], "max_steps": cfg.train.max_steps, "resumed_from_step": start_step or None,
        "finished": state["step"] >= cfg.train.max_steps,
        "loss_first": train_m[0]["loss"] if train_m else None,
        "loss_last": train_m[-1]["loss"] if train_m else None,
        "val_loss_start": next((m["val_loss"] for m in vals if m["step"] == 0), None),
        "val_loss": vals[-1]["val_loss"] if vals else None,
        "tokens_per_s": tot_tokens / tot_time if tot_time else 0.0,
        "tokens_per_s_windows": tok_s,
        "peak_rss_mb": peaks, "wall_s": wall, "files": p.stats["files"],
        "checkpoint": str(latest_checkpoint_dir(p.run_dir)), "config": to_dict(cfg),
        "command": " ".join(sys.argv),
    }
