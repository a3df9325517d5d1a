"""Measured peak RSS per Ray Train worker vs the pre-launch estimate, for real architectures.

    .venv/bin/python benchmarks/memory_envelope.py run [--only NAME ...] [--steps 3] [--seq 128]
    .venv/bin/python benchmarks/memory_envelope.py run --quantize int8 nf4 bf16-storage  # the quantized-base LoRA rows
    .venv/bin/python benchmarks/memory_envelope.py table      # markdown from the results so far

Models are random-init Qwen2.5-0.5B / Qwen2.5-1.5B built from their published config.json
(written below; weight values do not change memory), via `model.init=random`. Each
configuration is one fresh `rayft train` process (its own local Ray, its own workers) for a
few optimizer steps on sequences truncated to exactly --seq tokens, batch 1, fp32, one
torch thread per worker, gradient checkpointing on, `memory.budget_gb=0` (measure, do not
stop). Recorded per run: every worker's peak RSS (ru_maxrss, includes the final checkpoint
save), the worker RSS before the model, tokens/s, and the estimate printed at launch. Rows named ``...-q-<mode>`` train a LoRA on a frozen base stored
with ``model.quantize=<mode>`` (int8 / nf4 by bitsandbytes, or bf16-storage; rayft.train.lowbit),
one worker, 0.5B and 1.5B; ``--quantize MODE ...`` runs just those rows for the given modes.
Before each run the script waits until the machine has room (estimate x workers + 3 GB free)
or skips the run - it is a shared 24 GiB machine, and Ray kills workers past 95 % node memory. Results append to
benchmarks/out/memory_envelope/results.jsonl (one line per run, rerun skips done names).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "memory_envelope"
sys.path.insert(0, str(REPO / "src"))

# Published config.json of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B (architecture fields).
QWEN25 = {
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
        "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936},
    "qwen2.5-1.5b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
        "intermediate_size": 8960, "max_position_embeddings": 131072, "max_window_layers": 28,
        "model_type": "qwen2", "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936},
}
MARGIN_GB = 3
QUANTIZE_MODES = ("int8", "nf4", "bf16-storage")  # model.quantize values with matrix rows
HEADLINE = {"lora-0.5b-ddp-w1": "LoRA 0.5B, 1 worker",
            "lora-1.5b-zero3-w2-offp": "LoRA 1.5B, 2 workers ZeRO-3 (+ nvme param offload)",
            "lora-1.5b-zero3-w2": "LoRA 1.5B, 2 workers ZeRO-3",
            "full-0.5b-zero3-w4-offop": "full 0.5B, 4 workers ZeRO-3 + nvme offload (optimizer + params)",
            "full-0.5b-zero3-w4-offo": "full 0.5B, 4 workers ZeRO-3 + nvme optimizer offload",
            "full-0.5b-zero3-w4-offo-frozen-emb": "full 0.5B except the (tied) embeddings, 4 workers ZeRO-3 + "
                                                  "nvme optimizer offload"}


def matrix() -> list[dict]:
    """(name, model, method, strategy, workers, offload) in run order: headline targets first."""
    rows = []

    def add(method, model, strategy, w, off="", freeze=False, quantize="none", chunk=0, vchunks=0):
        name = (f"{method}-{model.split('-')[1]}-{strategy}-w{w}" + (f"-off{off}" if off else "")
                + ("-frozen-emb" if freeze else "") + (f"-q-{quantize}" if quantize != "none" else "")
                + (f"-lc{chunk}" if chunk else "") + (f"-vc{vchunks}" if vchunks else ""))
        rows.append({"name": name, "model": model, "method": method, "strategy": strategy, "workers": w,
                     "offload_optimizer": "nvme" if "o" in off else "none",
                     "offload_params": "nvme" if "p" in off else "none", "freeze_embeddings": freeze,
                     "quantize": quantize, "loss_chunk": chunk, "vocab_chunks": vchunks})
    m5, m15 = "qwen2.5-0.5b", "qwen2.5-1.5b"
    add("lora", m5, "ddp", 1)
    add("lora", m15, "zero3", 2)
    add("lora", m15, "zero3", 2, "p")
    add("full", m5, "zero3", 4, "op")
    add("full", m5, "zero3", 4, "o")
    add("full", m5, "zero3", 4, "o", freeze=True)
    add("full", m5, "zero3", 4, freeze=True)
    for s, w in (("ddp", 2), ("zero2", 2), ("zero3", 2), ("zero3", 1), ("ddp", 4), ("zero2", 4), ("zero3", 4)):
        add("lora", m5, s, w)
    add("lora", m5, "zero3", 2, "op")
    for s, w in (("ddp", 1), ("zero2", 2), ("zero3", 2), ("zero2", 4), ("zero3", 4)):
        add("full", m5, s, w)
    add("full", m5, "zero3", 2, "op")
    add("lora", m15, "ddp", 1)
    add("lora", m15, "zero3", 4)
    add("lora", m15, "zero3", 4, "p")
    add("full", m15, "zero3", 4, "op")
    for q in QUANTIZE_MODES:  # a quantized / bf16-stored frozen base: LoRA on ONE worker
        add("lora", m5, "ddp", 1, quantize=q)
        add("lora", m15, "ddp", 1, quantize=q)
    # train.loss_chunk (no batch x seq x vocab logits): beside lora-0.5b-ddp-w1 and the 1.5B nf4 row
    add("lora", m5, "ddp", 1, chunk=1024)
    add("lora", m15, "ddp", 1, quantize="nf4", chunk=1024)
    # ... and beside the full 0.5B with its embeddings trained (issue 19 item 3)
    add("full", m5, "zero3", 4, "o", chunk=1024)
    # train.vocab_chunks: the trained embedding/head gathered and swapped one vocabulary slice at a time
    add("full", m5, "zero3", 4, "o", chunk=1024, vchunks=8)
    return rows


def write_inputs(seq: int) -> tuple[dict, Path]:
    """Model dirs (config.json + the shipped tokenizer) and a pairs file whose every example is
    truncated at exactly ``seq`` tokens (short prompt, long response)."""
    from rayft.models.load import TINY_TOKENIZER

    dirs = {}
    for name, conf in QWEN25.items():
        d = OUT / "models" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(conf, indent=2))
        for f in TINY_TOKENIZER.iterdir():
            shutil.copy(f, d / f.name)
        dirs[name] = d
    words = ("the detective finally opens the red letter just in time while the city sleeps and "
             "nobody knows what happens next in this story ").split()
    pairs = OUT / "pairs.jsonl"
    with pairs.open("w") as f:
        for i in range(64):
            resp = " ".join(words[(i + j) % len(words)] for j in range(seq * 2))
            f.write(json.dumps({"prompt": f"Rewrite line {i} as a hook.", "response": resp}) + "\n")
    return dirs, pairs


def overrides(row: dict, model_dir: Path, pairs: Path, steps: int, seq: int) -> list[str]:
    w = row["workers"]
    return [f"run.dir={OUT / 'runs'}", f"run.name={row['name']}", "run.overwrite=true",
            f"data.path={pairs}", "data.format=prompt_response", "data.val_fraction=0.05",
            f"data.max_seq_len={seq}", f"model.name={model_dir}", "model.init=random", "model.dtype=float32",
            f"train.method={row['method']}", f"train.strategy={row['strategy']}",
            f"train.offload_optimizer={row['offload_optimizer']}", f"train.offload_params={row['offload_params']}",
            f"train.freeze_embeddings={str(row.get('freeze_embeddings', False)).lower()}", f"train.max_steps={steps}", "train.batch_size=1", "train.grad_accum=1", "train.warmup_steps=1",
            "train.log_every=1", f"train.checkpoint_every={steps}", "train.gradient_checkpointing=true",
            "train.keep_checkpoints=1", "lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "lora.r=8",
            f"scaling.num_workers={w}", f"scaling.cpus_per_worker={min(1.0, 2.0 / w):g}",
            "scaling.torch_threads=1", "scaling.max_failures=0", "memory.budget_gb=0", "memory.malloc=compact",
            "generate.prompt=", f"model.quantize={row.get('quantize', 'none')}",
            f"train.loss_chunk={row.get('loss_chunk', 0)}", f"train.vocab_chunks={row.get('vocab_chunks', 0)}"]


def estimate_for(ov: list[str]):
    from rayft.config import load
    from rayft.models.load import resolve_source
    from rayft.train.config import TrainConfig
    from rayft.train.memory import estimate
    from rayft.train.shape import model_shape

    cfg = load(TrainConfig, None, ov)
    return estimate(cfg, model_shape(cfg, resolve_source(cfg.model.name)), "float32")


def run_one(row: dict, dirs: dict, pairs: Path, steps: int, seq: int, timeout: int) -> dict:
    import psutil

    ov = overrides(row, dirs[row["model"]], pairs, steps, seq)
    est = estimate_for(ov)
    # other engineers' jobs share this machine: wait (up to 20 min) until ours fits with room to
    # spare, else skip - Ray's memory monitor kills workers anywhere on the node past 95 %
    need = est.total * row["workers"] + MARGIN_GB * 2**30
    deadline = time.time() + 1200
    while (avail := psutil.virtual_memory().available) < need and time.time() < deadline:
        time.sleep(30)
    base = dict(row, date=time.strftime("%Y-%m-%d %H:%M"), steps=steps, seq=seq,
                estimate_gb=est.total / 2**30, estimate_parts_gb={k: v / 2**30 for k, v in est.parts.items()},
                load_before=os.getloadavg())
    if need > avail:
        return dict(base, status="skipped", reason=f"machine guard: needs ~{need / 2**30:.1f} GB "
                    f"(estimate x {row['workers']} + {MARGIN_GB}), {avail / 2**30:.1f} GB available")
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
               RAYFT_CACHE=str(REPO / ".cache" / "rayft"), PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "rayft.cli", "train", *ov]
    log = OUT / "logs" / f"{row['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                cwd=REPO).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    run_dir = OUT / "runs" / row["name"]
    res = dict(base, wall_s=time.time() - t0, rc=rc, load_after=os.getloadavg(), command=" ".join(cmd[1:]))
    rep = run_dir / "report.json"
    if rc == 0 and rep.exists():
        r = json.loads(rep.read_text())
        mem = json.loads((run_dir / "memory.json").read_text())
        windows = [m for m in (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines())
                   if "loss" in m]
        steady = windows[1:] or windows  # first step includes warm-up allocations
        # the final checkpoint save happens after the last report: memory.json has the true end peak
        peaks = [max(a, b) for a, b in zip(r["peak_rss_mb"], mem.get("peak_rss_end_mb", r["peak_rss_mb"]))]
        res.update(status="ok", peak_rss_mb=peaks, peak_rss_train_mb=r["peak_rss_mb"],
                   rss_runtime_mb=mem["rss_runtime_mb"],
                   rss_built_mb=mem["rss_built_mb"], loss_first=r["loss_first"], loss_last=r["loss_last"],
                   tokens_per_s=sum(m.get("useful_tokens", m["tokens"]) for m in steady)  # non-padding, as before
                   / sum(m["window_s"] for m in steady))
    else:
        text = log.read_text(errors="replace")
        oom = "were killed due to the node running low on memory" in text
        res.update(status="node-oom" if oom else "failed", reason=text[-1500:])
        for f in ("memory.json", "metrics.jsonl"):  # what a failed run measured survives the cleanup
            if (run_dir / f).is_file():
                keep = OUT / "failed" / row["name"] / f
                keep.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(run_dir / f, keep)
                res.setdefault("kept", []).append(str(keep))
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints of 0.5B/1.5B models are GBs
    return res


def load_results() -> list[dict]:
    p = OUT / "results.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def oom_worker_rss(name: str) -> list[float]:
    """RSS (GB) of our Ray Train workers in Ray's "Top 10 memory users" at the OOM kill."""
    import re

    log = OUT / "logs" / f"{name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    seen: dict[str, float] = {}
    for pid, gb in re.findall(r"^(\d+)\t([\d.]+)\tray::RayTrainWorker", text, re.M):
        seen[pid] = max(seen.get(pid, 0.0), float(gb))
    return sorted(seen.values(), reverse=True)


def table() -> str:
    """Markdown rows: measured max worker peak, estimate (recomputed with today's memory.py), error."""
    res: dict[str, dict] = {}
    for r in load_results():  # the latest measurement wins; a later skip never hides one
        if r["status"] == "ok" or res.get(r["name"], {}).get("status") != "ok":
            res[r["name"]] = r
    dirs = {n: OUT / "models" / n for n in QWEN25}
    lines = ["| run | workers | strategy | offload | peak RSS per worker (GB) | max | estimate | error | "
             "tokens/s | ≤ 3.8 GB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in matrix():
        r = res.get(row["name"])
        if r is None:
            continue
        off = "/".join(x for x, k in (("opt", "offload_optimizer"), ("params", "offload_params"))
                       if row[k] != "none") or "-"
        if r["status"] == "node-oom":
            seen = oom_worker_rss(row["name"])
            lines.append(f"| {row['name']} | {row['workers']} | {row['strategy']} | {off} | killed by Ray's node "
                         f"memory monitor (shared machine full) with workers at {seen} GB | ≥ {max(seen or [0]):.2f} | "
                         f"{r['estimate_gb']:.2f} | | | no |")
            continue
        if r["status"] != "ok":
            why = r.get("reason", "").strip().splitlines()
            lines.append(f"| {row['name']} | {row['workers']} | {row['strategy']} | {off} | "
                         f"{r['status']}: {(why[-1] if why else '')[:90]} | | {r['estimate_gb']:.2f} | | | |")
            continue
        est = estimate_for(overrides(row, dirs[row["model"]], OUT / "pairs.jsonl", r["steps"], r["seq"])).total / 2**30
        peaks = [x / 1024 for x in r["peak_rss_mb"]]
        mx = max(peaks)
        lines.append(f"| {row['name']} | {row['workers']} | {row['strategy']} | {off} | "
                     f"{', '.join(f'{x:.2f}' for x in peaks)} | {mx:.2f} | {est:.2f} | {100 * (est - mx) / mx:+.0f} % | "
                     f"{r['tokens_per_s']:.1f} | {'yes' if mx <= 3.8 else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["run", "table"])
    ap.add_argument("--only", nargs="*", help="run names to (re)run")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--timeout", type=int, default=2400)
    ap.add_argument("--quantize", nargs="*", choices=QUANTIZE_MODES,
                    help="run only the model.quantize rows (LoRA 0.5B and 1.5B, 1 worker) of these modes")
    ap.add_argument("--passes", type=int, default=3, help="retry runs the shared machine skipped or OOM-killed")
    a = ap.parse_args()
    if a.mode == "table":
        print(table())
        return
    OUT.mkdir(parents=True, exist_ok=True)
    dirs, pairs = write_inputs(a.seq)
    todo = [r["name"] for r in matrix() if (a.only is None or r["name"] in a.only)
            and (a.quantize is None or r["quantize"] in a.quantize)]
    for i in range(a.passes):
        # done: measured, or failed for a reason of its own (skips and node OOMs caused by the
        # other jobs on this shared machine are retried on the next pass); --only reruns once
        done = set() if (a.only and i == 0) else {r["name"] for r in load_results() if r["status"] in ("ok", "failed")}
        pending = [r for r in matrix() if r["name"] in todo and r["name"] not in done]
        # smallest machine footprint first: the big runs wait for the shared machine to quieten
        need = {r["name"]: estimate_for(overrides(r, dirs[r["model"]], pairs, a.steps, a.seq)).total * r["workers"]
                for r in pending}
        pending.sort(key=lambda r: need[r["name"]])
        if not pending:
            break
        for row in pending:
            print(f"[bench] {row['name']} ...", flush=True)
            res = run_one(row, dirs, pairs, a.steps, a.seq, a.timeout)
            with (OUT / "results.jsonl").open("a") as f:
                f.write(json.dumps(res) + "\n")
            print(f"[bench] {row['name']}: {res['status']} peak {res.get('peak_rss_mb')} MB, estimate "
                  f"{res['estimate_gb']:.2f} GB, tokens/s {res.get('tokens_per_s')}", flush=True)
            if res["status"] == "ok":
                todo.remove(row["name"])


if __name__ == "__main__":
    main()
