"""Peak RSS of building a train worker's int8 / nf4 LoRA model from a PRETRAINED (safetensors)
base, three paths: ``old`` (transformers loads the whole base in bf16, then
lowbit.store_base_compact quantizes it), ``mmap`` (transformers' BitsAndBytesConfig, its default
memory-mapped loader: each linear quantized as its weight is read, but the mapped file pages stay
resident until loading ends) and ``new`` (lowbit.load_quantized: the same, weights read with
safetensors' pread backend). Memory only, no timing.

    .venv/bin/python benchmarks/load_quantized.py make DIR [--arch qwen2.5-1.5b]  # random bf16 weights, ~3 GB
    .venv/bin/python benchmarks/load_quantized.py run DIR [--quantize nf4] [--path old mmap new]
    .venv/bin/python benchmarks/load_quantized.py build DIR --path new --quantize nf4  # one measurement

``run`` measures each path in a fresh process (``build``) with the workers' compact malloc
(rayft._env.WORKER_MALLOC) and prints one JSON line per path: peak RSS (ru_maxrss) after
build_model, the peaks of its anonymous and file-backed parts (/proc/self/status RssAnon /
RssFile, sampled every 10 ms), RSS after it, the estimator's terms for the same config. ``make`` writes the
architecture's published config (benchmarks/memory_envelope.py QWEN25) with seeded random
bf16 weights (transformers' init) as sharded safetensors plus the tiny tokenizer, so the
directory works as ``model.name`` for `rayft train` too. Run it under the shared lock.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
GB = 2 ** 30


def make(out: Path, arch: str) -> None:
    import shutil

    import torch
    from memory_envelope import QWEN25
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rayft.models.load import TINY_TOKENIZER

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25[arch]), dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size="1GB")
    for f in TINY_TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    print(json.dumps({"made": str(out), "arch": arch, "params": sum(p.numel() for p in model.parameters())}))


def _sample_rss(peak: dict) -> None:
    import time
    while True:
        for line in open("/proc/self/status"):
            k, _, v = line.partition(":")
            if k in peak:
                peak[k] = max(peak[k], int(v.split()[0]) * 1024)
        time.sleep(0.01)


def build(src: Path, path: str, mode: str) -> None:
    import threading

    import psutil
    import torch

    from rayft.config import load
    from rayft.models.load import load_model, load_tokenizer
    from rayft.train import lowbit
    from rayft.train.build import build_model
    from rayft.train.config import TrainConfig
    from rayft.train.memory import estimate
    from rayft.train.shape import model_shape

    torch.set_num_threads(1)
    peak = {"RssAnon": 0, "RssFile": 0}
    threading.Thread(target=_sample_rss, args=(peak,), daemon=True).start()
    if path == "old":  # the whole bf16 base, then store_base_compact (build_model) quantizes it
        lowbit.load_quantized = lambda src, m, cd, trc: load_model(src, None, "bfloat16", trc)
    elif path == "mmap":  # transformers' BitsAndBytesConfig with its own (memory-mapped) loader
        lowbit.load_quantized = lambda src, m, cd, trc: load_model(
            src, None, "bfloat16", trc, quantization_config=lowbit.bnb_config(m, cd))
    cfg = load(TrainConfig, REPO / "configs/train-w1-4gb.yaml",
               [f"model.name={src}", f"model.quantize={mode}", "scaling.num_workers=1", "data.max_seq_len=128",
                "train.batch_size=1", "train.gradient_checkpointing=true"])
    tok = load_tokenizer(str(src))
    before = psutil.Process().memory_info().rss
    model = build_model(cfg, str(src), tok)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    est = estimate(cfg, model_shape(cfg, str(src)), "float32").parts
    print(json.dumps({"path": path, "quantize": mode, "peak_rss_gb": round(maxrss / GB, 3),
                      "peak_anon_gb": round(peak["RssAnon"] / GB, 3), "peak_file_gb": round(peak["RssFile"] / GB, 3),
                      "rss_after_gb": round(psutil.Process().memory_info().rss / GB, 3),
                      "rss_before_model_gb": round(before / GB, 3),
                      "n_quantized": len(lowbit.quantized_param_names(model)),
                      "estimate_gb": {k: round(v / GB, 3) for k, v in est.items()}}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["make", "run", "build"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--arch", default="qwen2.5-1.5b")
    ap.add_argument("--quantize", default="nf4", choices=["int8", "nf4"])
    ap.add_argument("--path", nargs="+", default=["old", "mmap", "new"], choices=["old", "mmap", "new"])
    a = ap.parse_args()
    if a.cmd == "make":
        return make(a.dir, a.arch)
    if a.cmd == "build":
        return build(a.dir, a.path[0], a.quantize)
    from rayft import _env

    env = dict(os.environ, **_env.WORKER_MALLOC)
    for p in a.path:
        subprocess.run([sys.executable, __file__, "build", str(a.dir), "--path", p, "--quantize", a.quantize],
                       env=env, check=True)


if __name__ == "__main__":
    main()
