"""`rayft watch` (issue 14): file landing -> new champion answering through `rayft serve`, by stage;
the daemon's overhead vs the same stages run by hand; the daemon's peak memory.

    .venv/bin/python benchmarks/watch_bench.py --model tiny --out /tmp/watch_bench
    .venv/bin/python benchmarks/watch_bench.py --model smollm2-135m-instruct --steps 20

One local Ray (started here, joined by every subprocess through RAY_ADDRESS):

1. by hand: `rayft curate`, `rayft train`, `rayft eval` (+ registry add/promote through eval's
   registry.promote) as separate CLI processes on file 1 -> wall time of the sequence;
2. daemon: `rayft watch once=true` on the same file 1 in a fresh watch dir (same recipe, same
   curate/eval settings: one full cycle) -> wall time, and its peak RSS (psutil, the daemon
   process itself; Ray workers are separate processes and reported apart);
   overhead = daemon / by hand - 1 (target <= 5 %);
3. latency: `rayft serve` on the daemon's registry; drop file 2, run the daemon again, poll
   the served model until it answers as the new champion (or the cycle is rejected) -> seconds
   from the file landing to the answer, split into the daemon's steps (curate from its
   new_data alert, train/eval/register/promote from state.json) and the serve hot swap.

Prints one JSON object (also written to <out>/watch_bench.json). Run on a quiet machine.
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
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"
PY = sys.executable



def _run(args: list[str], env: dict, log: Path) -> tuple[float, int, float]:
    """(wall s, exit code, peak RSS MB of the process itself) of one CLI subprocess."""
    import psutil

    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        ps, peak = psutil.Process(p.pid), 0
        while p.poll() is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.1)
    return time.time() - t0, p.returncode, peak / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-qwen2", help="model.name of the recipe (tiny-qwen2 | smollm2-135m-instruct)")
    ap.add_argument("--steps", type=int, default=20, help="train.max_steps per stage")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="/tmp/rayft_watch_bench")
    ap.add_argument("--num-cpus", type=int, default=0, help="local Ray CPUs (0: all)")
    a = ap.parse_args()

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = [json.loads(x) for x in SAMPLES.read_text(encoding="utf-8").splitlines()]
    en = [r for r in rows if r["metadata"]["language"] == "en"]
    data = out / "data"
    data.mkdir()
    (data / "file1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in en[:60]), encoding="utf-8")
    (data / "file2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in en[60:]), encoding="utf-8")

    import ray
    ray.init(num_cpus=a.num_cpus or None, include_dashboard=False)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)

    train = [f"model.name={a.model}", f"train.max_steps={a.steps}", "train.checkpoint_every=10",
             f"scaling.num_workers={a.workers}", "generate.prompt=", "data.max_seq_len=256"]
    curate = ["split.golden_fraction=0.2", "split.val_fraction=0.15"]
    evals = ["gate.golden_metric=loss", "score.generate=false", "data.max_rows=64", "data.max_seq_len=256"]
    res: dict = {"model": a.model, "steps": a.steps, "workers": a.workers}

    # 1. by hand: the five commands a person runs today (eval registers + promotes)
    hand = out / "hand"
    cmds = [
        [PY, "-m", "rayft.cli", "curate", "--config", "configs/curate.yaml", f"input={data / 'file1.jsonl'}",
         f"output={hand / 'curated'}", *curate],
        [PY, "-m", "rayft.cli", "train", "--config", "configs/tiny.yaml", f"run.dir={hand}", "run.name=full",
         f"data.path={hand / 'curated/en/train'}", f"data.val_path={hand / 'curated/en/val'}", *train],
        [PY, "-m", "rayft.cli", "eval", "--config", "configs/eval.yaml", f"candidate={hand / 'full'}",
         "data.golden=", f"data.curated={hand / 'curated'}", "data.language=en",
         f"registry.uri={hand / 'registry'}", "registry.name=en", "registry.promote=true", *evals],
    ]
    hand_s = []
    for i, c in enumerate(cmds):
        s, rc, _ = _run(c, env, out / f"hand-{i}.log")
        if rc not in (0, 3):
            print(f"by-hand step {i} failed (rc {rc}); see {out / f'hand-{i}.log'}", file=sys.stderr)
            return 1
        hand_s.append(round(s, 2))
    res["by_hand_s"] = {"curate": hand_s[0], "train": hand_s[1], "eval_register_promote": hand_s[2],
                        "total": round(sum(hand_s), 2)}

    # 2. the daemon, same work
    wd, inbox = out / "watch", out / "incoming"
    inbox.mkdir()
    shutil.copy(data / "file1.jsonl", inbox)
    watch = [PY, "-m", "rayft.cli", "watch", "--config", "configs/watch.yaml", f"input={inbox}", f"dir={wd}",
             "recipe=configs/tiny.yaml", "once=true", "watch.warmup_epochs=0", "watch.lines=[en]",
             "watch.settle_s=0.5", "resources.max_memory_percent=100", "resources.min_disk_free_gb=0",
             "train.overrides=[" + ",".join(train) + "]", "curate.overrides=[" + ",".join(curate) + "]",
             "eval.overrides=[" + ",".join(evals) + "]"]
    s, rc, peak = _run(watch, env, out / "daemon-1.log")
    if rc != 0:
        print(f"daemon failed (rc {rc}); see {out / 'daemon-1.log'}", file=sys.stderr)
        return 1
    res["daemon_s"] = round(s, 2)
    res["daemon_overhead"] = round(s / sum(hand_s) - 1, 4)
    res["daemon_peak_rss_mb"] = round(peak, 1)
    st = json.loads((wd / "state.json").read_text())["lines"]["en"]["history"][-1]
    res["daemon_cycle_1"] = {x["name"]: x["wall_s"] for x in st["steps"]}

    # 3. file landing -> new champion answering through rayft serve
    from ray import serve

    from rayft.config import load
    from rayft.registry import Registry
    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start
    from rayft.testing.net import free_port
    import requests

    reg = Registry(str(wd / "registry"), "en")
    v1 = reg.aliases()["champion"]
    url = start(load(ServeConfig, REPO / "configs/serve.yaml", [
        f"registry={wd / 'registry'}", "models=[en]", f"port={free_port()}", "blocking=false",
        "alias_refresh_s=0.2", "max_tokens_default=4", "api_key_env=RAYFT_WATCH_BENCH_NO_KEY"]))

    def served() -> str:
        r = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "en", "max_tokens": 2, "messages": [{"role": "user", "content": "hello"}]})
        return r.json().get("model", "") if r.ok else ""

    assert served() == f"en:{v1}"
    t_land = time.time()
    shutil.copy(data / "file2.jsonl", inbox)
    s2, rc, peak2 = _run(watch, env, out / "daemon-2.log")
    t_done = time.time()
    st = json.loads((wd / "state.json").read_text())["lines"]["en"]["history"][-1]
    alerts = [json.loads(x) for x in (wd / "alerts.jsonl").read_text().splitlines()]
    nd = [e for e in alerts if e["event"] == "new_data"][-1]
    curate_s = (nd.get("data") or {}).get("curate_s")
    split = {x["name"]: x["wall_s"] for x in st["steps"]}
    new = reg.aliases()["champion"]
    swap_s = None
    if st["decision"] == "promote":
        while served() != f"en:{new}" and time.time() - t_done < 120:
            time.sleep(0.1)
        swap_s = round(time.time() - t_done, 2)
    res["latency"] = {"decision": st["decision"], "file_to_answer_s": round(time.time() - t_land, 2)
                      if swap_s is not None else None, "daemon_s": round(s2, 2), "curate_s": curate_s,
                      "steps_s": split, "serve_swap_after_daemon_s": swap_s, "reasons": st.get("reasons")}
    res["daemon_peak_rss_mb"] = round(max(peak, peak2), 1)
    serve.shutdown()
    ray.shutdown()
    (out / "watch_bench.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
