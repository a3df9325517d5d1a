"""Sequence packing (data.packing) vs padded batches: useful tokens/s and validation loss after
the same number of training examples (issue 19 item 2).

    .venv/bin/python benchmarks/packing_bench.py [--model smollm2-135m-instruct] [--steps 30] [--seq 512]

Both runs are `rayft train` with configs/demo.yaml (W1 subtitle pairs, SmolLM2-135M LoRA,
2 Ray Train workers x 1 CPU) and the same data.max_seq_len (default 512: no W1 pair is
truncated, so both see identical examples), batch size, grad_accum, lr and seed:
* unpacked: --steps optimizer steps of train.batch_size padded examples per worker;
* packed:   data.packing=true, train.batch_size packed rows per worker, for as many steps as
            consume the same number of examples: steps = round(--steps / mean examples per
            packed row), the mean measured by packing the tokenized training pairs here with
            the same first-fit (rayft.data.packing). The examples each run actually consumed
            are summed from its metrics.jsonl ("examples") and reported.
Reported per run: useful_tokens_per_s (non-padding tokens / s) and tokens_per_s (positions
computed, padding included) over the steady windows (step > 1), the final validation loss
(the same unpacked validation rows for both), examples consumed, wall time and peak RSS.
The issue's target: packed useful tokens/s >= 1.5x unpacked at equal validation loss.
Writes benchmarks/out/packing_bench.json and prints it. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for k, v in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}.items():
    os.environ.setdefault(k, v)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from train_throughput import ray_run as run  # noqa: E402  (benchmarks/ is on sys.path: scripts run from it)


def examples_per_row(cfg) -> dict:
    """Tokenize the data file's pairs as training does and pack them as one worker would
    (all rows, one shard): mean examples per packed row, and the padding a padded batch of
    train.batch_size random rows carries."""
    import numpy as np

    from rayft.data.formats import _normalize, detect_record_format
    from rayft.data.packing import pack_examples
    from rayft.data.tokenize import encode_row
    from rayft.models.load import load_tokenizer, resolve_source

    tok = load_tokenizer(resolve_source(cfg.model.name))
    ex = []
    for line in Path(cfg.data.path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        r = _normalize(rec, detect_record_format(rec))
        ids, lab, _ = encode_row(tok, r.get("system") or cfg.data.system_prompt, r.get("history", ""),
                                 r["prompt"], r["response"], cfg.data.max_seq_len)
        ex.append((np.asarray(ids), np.asarray(lab)))
    packs = pack_examples(ex, cfg.data.max_seq_len, seed=0)
    lens = np.array([len(e[0]) for e in ex])
    rng = np.random.default_rng(0)
    bs = cfg.train.batch_size
    batches = [lens[rng.permutation(len(lens))[:bs]] for _ in range(200)]
    return {"pairs": len(ex), "tokens_mean": float(lens.mean()), "tokens_max": int(lens.max()),
            "packed_rows": len(packs), "examples_per_row": len(ex) / len(packs),
            "packed_fill": float(lens.sum() / (len(packs) * cfg.data.max_seq_len)),
            "padded_batch_fill": float(np.mean([b.sum() / (len(b) * b.max()) for b in batches]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs/demo.yaml"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of the unpacked run")
    ap.add_argument("--seq", type=int, default=512, help="data.max_seq_len of both runs (the packed row length)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/out"))
    a = ap.parse_args()

    from rayft.config import load
    from rayft.train.config import TrainConfig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    common = [f"model.name={a.model}", f"data.max_seq_len={a.seq}", f"run.dir={out}", "run.overwrite=true",
              "generate.prompt=", "train.eval_every=0", "train.log_every=5"]
    base = load(TrainConfig, a.config, common)
    stats = examples_per_row(base)
    packed_steps = max(1, round(a.steps / stats["examples_per_row"]))
    load_avg = os.getloadavg()
    unpacked = run(load(TrainConfig, a.config, common + [
        "run.name=packing_off", f"train.max_steps={a.steps}", f"train.checkpoint_every={a.steps}",
        f"train.warmup_steps={min(base.train.warmup_steps, a.steps - 1)}"]))
    packed = run(load(TrainConfig, a.config, common + [
        "run.name=packing_on", "data.packing=true", f"train.max_steps={packed_steps}",
        f"train.checkpoint_every={packed_steps}",
        f"train.warmup_steps={min(base.train.warmup_steps, packed_steps - 1)}"]))
    res = {"model": a.model, "config": a.config, "max_seq_len": a.seq, "data": stats,
           "unpacked": unpacked, "packed": packed,
           "useful_tokens_per_s_ratio": packed["useful_tokens_per_s"] / unpacked["useful_tokens_per_s"],
           "val_loss_ratio": (packed["val_loss"] / unpacked["val_loss"]
                              if packed["val_loss"] and unpacked["val_loss"] else None),
           "loadavg_before": load_avg, "loadavg_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / "packing_bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
