"""Tokens/s of the Ray Train LoRA loop vs a plain single-process PyTorch loop, same run.

    .venv/bin/python benchmarks/train_throughput.py [--model smollm2-135m-instruct] [--steps 30]

Both sides train the same LoRA (same model, rank, targets, data, global batch, sequence
length, AdamW, fp32) for the same number of optimizer steps:
* ray:   `rayft train` (TorchTrainer, 2 workers x 1 CPU, 1 torch thread each, DDP/gloo,
         per-worker batch B/2); tokens/s from the loop's own windows, first window excluded.
* plain: one process, torch.set_num_threads(2), batch B as micro-batches of B/2 with gradient
         accumulation (each forward shaped as a Ray worker's; --plain-micro B: one forward);
         tokens/s after the first step.
Start-up (Ray, worker launch, model load) is reported separately, not in tokens/s.
Prints a JSON line and writes benchmarks/out/train_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(k, v)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def plain_loop(cfg, steps: int, batch: int, micro: int) -> dict:
    """The same LoRA step a user would hand-write: no Ray, no DDP, 2 threads. The global
    batch runs as micro-batches of ``micro`` rows with gradient accumulation, so every
    forward has the shapes (and padding) a Ray worker's has."""
    import numpy as np
    import torch

    from rayft.data.tokenize import collate, encode_pair
    from rayft.models.load import load_tokenizer, resolve_source
    from rayft.data.formats import read_pairs
    from rayft.train.launch import prepare
    from rayft.train.build import build_model

    torch.set_num_threads(2)
    p = prepare(cfg, read=read_pairs)  # in-process read: the baseline has no Ray
    source = resolve_source(cfg.model.name)
    tok = load_tokenizer(source)
    model = build_model(cfg, source, tok)
    model.train()
    rows = p.train_table.to_pylist()
    ex = [encode_pair(tok, r["system"], r["history"], r["prompt"], r["response"], cfg.data.max_seq_len)[:2]
          for r in rows]
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr)
    rng = np.random.default_rng(0)
    times, toks = [], []
    for s in range(steps):
        idx = rng.choice(len(ex), batch, replace=False)
        parts = [collate([(np.asarray(ex[i][0]), np.asarray(ex[i][1])) for i in idx[j:j + micro]], tok.pad_token_id)
                 for j in range(0, batch, micro)]
        t0 = time.perf_counter()
        for b in parts:
            out = model(**b)
            (out.loss / len(parts)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        toks.append(sum(float(b["attention_mask"].sum()) for b in parts))
    return {"tokens_per_s": sum(toks[1:]) / sum(times[1:]), "steps": steps, "micro_batch": micro,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ray_run(cfg) -> dict:
    """One `rayft train` run: rates over the steady windows (step > 1) of its metrics.jsonl -
    useful_tokens_per_s (non-padding) and tokens_per_s (positions computed) - plus examples
    consumed, val losses, peak RSS per worker and wall time. benchmarks/packing_bench.py too."""
    from rayft.train.launch import run_training

    t0 = time.time()
    run_dir = Path(run_training(cfg))
    wall = time.time() - t0
    rep = json.loads((run_dir / "report.json").read_text())
    m = [x for x in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in x]
    steady = [x for x in m if x["step"] > 1]
    dt = sum(x["window_s"] for x in steady)
    return {"steps": rep["steps"], "examples": sum(x.get("examples", 0) for x in m),
            "useful_tokens_per_s": sum(x.get("useful_tokens", x["tokens"]) for x in steady) / dt,
            "tokens_per_s": sum(x["tokens"] for x in steady) / dt,
            "val_loss_start": rep.get("val_loss_start"), "val_loss": rep.get("val_loss"),
            "peak_rss_mb_per_worker": rep["peak_rss_mb"], "wall_s_incl_startup": wall, "run_dir": str(run_dir)}


def ray_loop(cfg) -> dict:
    r = ray_run(cfg)
    return {"tokens_per_s": r["useful_tokens_per_s"],  # non-padding, as plain_loop counts
            "steps": r["steps"], "peak_rss_mb_per_worker": r["peak_rss_mb_per_worker"],
            "wall_s_incl_startup": r["wall_s_incl_startup"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="global batch (ray: batch/2 per worker)")
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--plain-micro", type=int, default=0,
                    help="plain loop micro-batch (0: batch/2, the shape a Ray worker runs; batch: one forward)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/out"))
    a = ap.parse_args()

    from rayft.config import load
    from rayft.train.config import TrainConfig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.name={a.model}", f"train.max_steps={a.steps}", f"data.max_seq_len={a.seq}",
              f"run.dir={out}", "run.name=throughput", "run.overwrite=true", "generate.prompt=",
              "train.log_every=5", f"train.checkpoint_every={a.steps}", "lora.dropout=0.0",
              "train.grad_accum=1", "train.eval_every=0"]
    ray_cfg = load(TrainConfig, REPO / "configs/demo.yaml",
                   common + ["scaling.num_workers=2", "scaling.cpus_per_worker=1", f"train.batch_size={a.batch // 2}"])
    plain_cfg = load(TrainConfig, REPO / "configs/demo.yaml", common + [f"train.batch_size={a.batch}"])
    load_avg = os.getloadavg()
    plain = plain_loop(plain_cfg, a.steps, a.batch, a.plain_micro or a.batch // 2)
    ray_res = ray_loop(ray_cfg)
    res = {"model": a.model, "global_batch": a.batch, "max_seq_len": a.seq, "steps": a.steps,
           "plain": plain, "ray": ray_res, "ratio_ray_over_plain": ray_res["tokens_per_s"] / plain["tokens_per_s"],
           "loadavg_before": load_avg, "loadavg_after": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "train_throughput.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
