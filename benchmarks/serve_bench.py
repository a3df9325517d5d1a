"""Serve benchmark (issue 6): overhead of `rayft serve` vs a plain in-process call, and failed
requests across promote -> rollback -> promote under steady load.

    .venv/bin/python benchmarks/serve_bench.py                       # tiny 2-layer model
    .venv/bin/python benchmarks/serve_bench.py --model smollm2-135m-instruct --requests 60

Both sides run the SAME code path for generation (``rayft.serve.engine.Engine`` with one
LoRA adapter from the registry, greedy, ``--max-tokens`` new tokens, the same torch thread
count); the served side adds HTTP, the Serve proxy, the gateway (auth, validation,
routing) and the DeploymentHandle hop to the multiplexed model replica.

Issue 20: ``concurrency`` runs 1/4/8 (``--levels``) client threads against the served app
(throughput vs the 1-client rate, p50/p99), ``ttft`` measures time-to-first-token of streamed
requests (1 and 8 clients), and the hot swap runs with streaming clients beside the plain
ones. ``--also-unbatched`` redeploys the app with ``max_batch_size=1`` and repeats the
concurrency runs (before/after batching in the same run).

    .venv/bin/python benchmarks/serve_bench.py --levels 1,4,8 --also-unbatched
    .venv/bin/python benchmarks/serve_bench.py --model smollm2-135m-instruct --requests 48 --levels 1,8

Issue 20 item 3: ``--engine transformers,llamacpp`` runs the suite for each engine (serve config
``engine``; llamacpp converts each version to GGUF ``--gguf-type`` once, cached) and adds
``engines``: generated tokens/s of each engine on the same prompt and thread count
(``--threads``), in-process and served sequentially, ``--gen-tokens`` greedy tokens per
request, and the greedy answers compared token by token (target: llamacpp >= 4x transformers on
SmolLM2-135M, same answer). ``--engine-only`` skips the rest of the suite.

    .venv/bin/python benchmarks/serve_bench.py --model smollm2-135m-instruct --engine transformers,llamacpp \
        --engine-only --threads 2 --gen-tokens 64 --gen-requests 8

Optional ``--redeploy-baseline``: the same steady load across a Serve rolling update
(redeploying the app with a changed replica config), the way a version change is done
without aliases. Prints one JSON document; the numbers go to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = [{"role": "user", "content": "Rewrite as a viral hook: the detective opens the letter."}]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(lat_s: list[float], wall: float) -> dict:
    ms = [x * 1000 for x in lat_s]
    return {"n": len(ms), "req_per_s": len(ms) / wall, "p50_ms": pct(ms, 0.50), "p99_ms": pct(ms, 0.99),
            "mean_ms": statistics.fmean(ms)}


def build_registry(root: Path, model: str) -> tuple[str, str, str]:
    from rayft.testing.runs import make_run
    from rayft.registry import Registry

    reg = Registry(str(root / "reg"), "en")
    ev = {"decision": "promote", "champion_version": None, "gate": {"golden_metric": "loss"},
          "metrics": {"candidate": {"golden": {"loss": 1.0}}}}
    v1 = reg.register(make_run(root / "r1", base=model, noise=0.05, lora_seed=1), ev)["version"]
    reg.promote(v1)
    v2 = reg.register(make_run(root / "r2", base=model, noise=0.05, lora_seed=2), {**ev, "champion_version": v1})
    return str(root / "reg"), v1, v2["version"]


class InProcess:
    """The baseline: the same engine + adapter, called directly in this process."""

    def __init__(self, uri: str, version: str, model: str, max_tokens: int, threads: int,
                 engine: str = "transformers", gguf_type: str = "f16"):
        from rayft.models.spec import base_spec
        from rayft.registry import Registry
        from rayft.serve.app import make_engine

        self.eng = make_engine(base_spec(model, 0), threads, 0, 30.0, {"kind": engine, "gguf_type": gguf_type})
        m, local = Registry(uri, "en").fetch(version)
        self.h = self.eng.load(f"en/{version}", m, local)
        self.req = {"kind": "chat", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0,
                    "stop": [], "seed": None}
        for _ in range(3):
            self.eng.generate(self.h, self.req)

    def run(self, n: int) -> tuple[list[float], float]:
        lat = []
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            self.eng.generate(self.h, self.req)
            lat.append(time.perf_counter() - t)
        return lat, time.perf_counter() - t0


def run_clients(n: int, concurrency: int, key: str, one) -> float:
    """n requests from ``concurrency`` client threads (each its own authorized
    requests.Session), ``one(session)`` per request; returns the wall seconds."""
    import requests

    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    def worker(k: int) -> None:
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {key}"
        for _ in range(k):
            one(s)

    threads = [threading.Thread(target=worker, args=(k,)) for k in per]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def http_load(url: str, key: str, n: int, concurrency: int, max_tokens: int) -> tuple[list[float], float, int]:
    """n chat requests from ``concurrency`` client threads: (latencies, wall seconds, errors)."""
    lat, errors, lock = [], [], threading.Lock()
    body = {"model": "en", "messages": PROMPT, "max_tokens": max_tokens}

    def one(s) -> None:
        t = time.perf_counter()
        r = s.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        dt = time.perf_counter() - t
        with lock:
            (lat if r.status_code == 200 else errors).append(dt if r.status_code == 200 else r.status_code)

    wall = run_clients(n, concurrency, key, one)
    return lat, wall, len(errors)


def stream_once(s, url: str, body: dict) -> tuple[float, float, int]:
    """One streamed chat request: (time to first content chunk, total time, content chunks)."""
    t = time.perf_counter()
    first, n = None, 0
    with s.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ch = json.loads(line[6:])
            if "error" in ch:
                raise RuntimeError(ch["error"]["message"])
            if ch["choices"] and ch["choices"][0].get("delta", {}).get("content"):
                n += 1
                if first is None:
                    first = time.perf_counter() - t
    total = time.perf_counter() - t
    return (first if first is not None else total), total, n


def ttft(url: str, key: str, n: int, concurrency: int, max_tokens: int) -> dict:
    """Time-to-first-token of streamed requests from ``concurrency`` clients."""
    first, total, chunks, errors, lock = [], [], [], [], threading.Lock()
    body = {"model": "en", "messages": PROMPT, "max_tokens": max_tokens}

    def one(s) -> None:
        try:
            f, t, c = stream_once(s, url, body)
            with lock:
                first.append(f)
                total.append(t)
                chunks.append(c)
        except Exception as e:  # counted, never hidden
            with lock:
                errors.append(repr(e)[:200])

    wall = run_clients(n, concurrency, key, one)
    if not first:
        return {"concurrency": concurrency, "errors": len(errors), "failures": errors[:3]}
    return {"concurrency": concurrency, "ttft": summary(first, wall), "total": summary(total, wall),
            "content_chunks_mean": statistics.fmean(chunks), "errors": len(errors), "failures": errors[:3]}


def completion_tokens(url: str, key: str, max_tokens: int) -> int:
    """How many tokens the benchmark's request generates (greedy: the same every time), so a
    throughput figure can be read as tokens."""
    import requests

    r = requests.post(f"{url}/v1/chat/completions", json={"model": "en", "messages": PROMPT, "max_tokens": max_tokens},
                      headers={"Authorization": f"Bearer {key}"}, timeout=300)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"]


def concurrency_sweep(url: str, key: str, args) -> dict:
    """Throughput and latency at each client count; ``speedup`` is req/s over the 1-client rate,
    ``p99_ratio`` the p99 over the 1-client p99 (issue 20 target: >= 3x at <= 2x with 8)."""
    http_load(url, key, 8, 8, args.max_tokens)  # warm: batches of every size seen once
    out = {}
    for c in args.levels:
        lat, wall, err = http_load(url, key, max(c, args.requests), c, args.max_tokens)
        out[str(c)] = summary(lat, wall) | {"errors": err}
    one = out.get("1")
    if one:
        for r in out.values():
            r["speedup"] = r["req_per_s"] / one["req_per_s"]
            r["p99_ratio"] = r["p99_ms"] / one["p99_ms"]
    return out


def tokens_per_s(base: InProcess, n: int, gen_tokens: int) -> dict:
    """In-process generated tokens/s: n greedy requests of ``gen_tokens`` new tokens (no EOS stop
    is forced; the count is what was generated), plus the greedy answer for the answer check."""
    req = {**base.req, "max_tokens": gen_tokens}
    base.eng.generate(base.h, req)  # warm
    toks, lat = 0, []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        out = base.eng.generate(base.h, req)
        lat.append(time.perf_counter() - t)
        toks += out["completion_tokens"]
    wall = time.perf_counter() - t0
    job = base.eng.prepare(base.h, req)
    ids = base.h.tok(out["text"], add_special_tokens=False)["input_ids"]
    return {"requests": n, "generated_tokens": toks, "tokens_per_s": toks / wall, "p50_ms": pct(lat, 0.5) * 1000,
            "prompt_tokens": len(job.ids), "answer": out["text"], "answer_ids": ids,
            "finish_reason": out["finish_reason"]}


def served_tokens_per_s(url: str, key: str, n: int, gen_tokens: int) -> dict:
    """Generated tokens/s through `rayft serve` (HTTP, one client, sequential requests)."""
    import requests

    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {key}"
    body = {"model": "en", "messages": PROMPT, "max_tokens": gen_tokens}
    s.post(f"{url}/v1/chat/completions", json=body, timeout=300).raise_for_status()  # warm
    toks, lat, text = 0, [], None
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        r = s.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        r.raise_for_status()
        lat.append(time.perf_counter() - t)
        j = r.json()
        toks += j["usage"]["completion_tokens"]
        text = j["choices"][0]["message"]["content"]
    wall = time.perf_counter() - t0
    return {"requests": n, "generated_tokens": toks, "tokens_per_s": toks / wall, "p50_ms": pct(lat, 0.5) * 1000,
            "answer": text}


def agreement(a: list[int], b: list[int]) -> dict:
    """How far two greedy answers agree: identical?, common token prefix, its share of the longer."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return {"identical": a == b, "common_prefix_tokens": n, "tokens": [len(a), len(b)],
            "prefix_share": n / max(1, len(a), len(b))}


def handle_direct(app_name: str, version: str, n: int, max_tokens: int) -> dict:
    """Requests straight to the model deployment through a DeploymentHandle (no HTTP, proxy or
    gateway): the handle hop + @serve.batch + the replica around the same engine call."""
    from ray import serve

    h = serve.get_deployment_handle("model_0", app_name=app_name).options(multiplexed_model_id=f"en/{version}")
    req = {"kind": "chat", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0,
           "stop": [], "seed": None, "stream": False, "model": "en"}
    for _ in range(3):
        h.generate.remote(req).result()
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        out = h.generate.remote(req).result()
        assert "error" not in out, out
        lat.append(time.perf_counter() - t)
    return summary(lat, time.perf_counter() - t0)


def posts(url: str, n: int, status: int, body: dict | None = None, key: str = "", warm: int = 0
          ) -> tuple[list[float], float, int]:
    """n sequential POSTs from one session, each expected to answer ``status``; ``warm`` untimed
    first. (latencies s, wall s, 0 errors): a ``rounds`` path."""
    import requests

    s = requests.Session()
    if key:
        s.headers["Authorization"] = f"Bearer {key}"
    for _ in range(warm):
        s.post(url, json=body, timeout=60)
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        assert s.post(url, json=body, timeout=60).status_code == status
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - t0, 0


def timed_posts(url: str, n: int, status: int, body: dict | None = None, key: str = "", warm: int = 0) -> dict:
    lat, wall, _ = posts(url, n, status, body, key, warm)
    return summary(lat, wall)


class LocalModelServer:
    """rayft's replica-side request path without Ray Serve: the ModelServer class (multiplexed
    cache bypassed: it needs a replica), its batch loop, thread hop and continuous batching,
    called from an asyncio loop in this process. Minus ``InProcess``, it is what our own
    serving code costs per request."""

    def __init__(self, uri: str, version: str, model: str, max_tokens: int, threads: int):
        from rayft.models.spec import base_spec
        from rayft.registry import Registry
        from rayft.serve.app import ModelServer

        self.srv = ModelServer.func_or_class(base_spec(model, 0), uri, threads, 0, 30.0, 8, 0.0,
                                             {"kind": "transformers"})
        m, local = Registry(uri, "en").fetch(version)
        h = self.srv.engine.load(f"en/{version}", m, local)

        async def get_model(_mid):
            return h
        self.srv.get_model = get_model
        self.mid = f"en/{version}"
        self.req = {"kind": "chat", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0,
                    "top_p": 1.0, "stop": [], "seed": None}
        self.loop = asyncio.new_event_loop()
        self.run(3)

    def run(self, n: int) -> tuple[list[float], float, int]:
        async def go():
            lat = []
            for _ in range(n):
                t = time.perf_counter()
                out = await self.srv.generate(dict(self.req), self.mid)
                assert "error" not in out, out
                lat.append(time.perf_counter() - t)
            return lat
        t0 = time.perf_counter()
        lat = self.loop.run_until_complete(go())
        return lat, time.perf_counter() - t0, 0


def gateway_only(url: str, key: str, n: int) -> dict:
    """Requests the gateway answers itself (404 unknown model): HTTP + proxy + gateway, no model."""
    return timed_posts(f"{url}/v1/chat/completions", n, 404, {"model": "no-such-model", "messages": PROMPT}, key)


def rounds(paths: dict, n: int) -> dict:
    """``n`` rounds calling each of ``paths`` ({name: fn() -> (latencies, wall s, errors)}) in turn,
    so that the (shared, fluctuating) machine load hits all alike; then pooled percentiles."""
    acc = {k: ([], 0.0, 0) for k in paths}
    for _ in range(n):
        for k, fn in paths.items():
            lat, wall, err = fn()
            a = acc[k]
            acc[k] = (a[0] + lat, a[1] + wall, a[2] + err)
    return {k: summary(lat, wall) | {"errors": err} for k, (lat, wall, err) in acc.items()}


def interleaved(base: InProcess, url: str, key: str, args) -> dict:
    """Rounds of in-process / served-sequential / served-concurrent batches (``rounds``)."""
    http_load(url, key, 6, 1, args.max_tokens)  # warm: adapter loaded, connections open
    per = max(1, args.requests // args.rounds)
    out = rounds({"in_process": lambda: (*base.run(per), 0),
                  "served_sequential": lambda: http_load(url, key, per, 1, args.max_tokens),
                  "served_concurrent": lambda: http_load(url, key, per, args.concurrency, args.max_tokens)},
                 args.rounds)
    out["served_concurrent"]["concurrency"] = args.concurrency
    return out


class SteadyLoad:
    """``clients`` threads sending short chat requests back to back (plus ``stream_clients``
    streaming ones); records every outcome."""

    def __init__(self, url: str, key: str, clients: int, max_tokens: int, stream_clients: int = 0):
        self.url, self.key, self.max_tokens = url, key, max_tokens
        self.stop = threading.Event()
        self.ok: list[tuple[float, str]] = []
        self.failed: list[str] = []
        self.streamed = 0
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        self.threads += [threading.Thread(target=self.run_stream, daemon=True) for _ in range(stream_clients)]

    def run_stream(self) -> None:
        import requests
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.key}"
        while not self.stop.is_set():
            try:
                stream_once(s, self.url, {"model": "en", "messages": PROMPT, "max_tokens": self.max_tokens})
                self.streamed += 1
            except Exception as e:  # an error event, a reset connection: all count
                self.failed.append(f"stream: {e!r}"[:300])

    def run(self) -> None:
        import requests
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {self.key}"
        while not self.stop.is_set():
            try:
                r = s.post(f"{self.url}/v1/chat/completions", timeout=300,
                           json={"model": "en", "messages": PROMPT, "max_tokens": self.max_tokens})
                if r.status_code == 200:
                    self.ok.append((time.time(), r.json()["model"]))
                else:
                    self.failed.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except Exception as e:  # connection reset etc. also count
                self.failed.append(repr(e))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=300)

    def wait_for(self, model: str, since: float, timeout: float = 300) -> float:
        end = time.time() + timeout
        while time.time() < end:
            hit = [t for t, m in list(self.ok) if m == model and t >= since]
            if hit:
                return hit[0] - since
            time.sleep(0.02)
        raise RuntimeError(f"{model} never answered")


def hot_swap(url: str, key: str, uri: str, v1: str, v2: str, clients: int, max_tokens: int,
             stream_clients: int = 0) -> dict:
    from rayft.registry import Registry

    reg = Registry(uri, "en")
    swaps = []
    with SteadyLoad(url, key, clients, max_tokens, stream_clients) as load:
        time.sleep(3)
        for action, target in (("promote", v2), ("rollback", v1), ("promote", v2)):
            t = time.time()
            reg.promote(target) if action == "promote" else reg.rollback()
            swaps.append({"action": action, "to": target, "switch_s": load.wait_for(f"en:{target}", t)})
            time.sleep(3)
        t_end = time.time()
    return {"clients": clients, "stream_clients": stream_clients, "requests_ok": len(load.ok),
            "streams_ok": load.streamed, "requests_failed": len(load.failed),
            "failures": load.failed[:5], "swaps": swaps, "duration_s": t_end - load.ok[0][0] if load.ok else None}


def redeploy_baseline(url: str, key: str, cfg, clients: int, max_tokens: int) -> dict:
    """Same load across a Serve rolling update of the model deployment (replica restart)."""
    from ray import serve

    from rayft.serve.app import build_app

    with SteadyLoad(url, key, clients, max_tokens) as load:
        time.sleep(3)
        t = time.time()
        # a different torch thread count changes the replica's init args -> rolling update
        serve.run(build_app(cfg.model_copy(update={"torch_threads": (cfg.torch_threads or 1) + 1})),
                  name=cfg.app_name,
                  route_prefix=cfg.route_prefix)
        redeploy_s = time.time() - t
        time.sleep(3)
    return {"clients": clients, "requests_ok": len(load.ok), "requests_failed": len(load.failed),
            "failures": load.failed[:5], "redeploy_s": redeploy_s}


def serve_floor():
    """Deploys Ray Serve's floor at /floor: an empty FastAPI route on a 0-CPU ingress replica (HTTP +
    proxy + one hop, no rayft code), and /floor/body, which only reads the request body (Serve's
    replica fetches a body from the proxy with one more actor call, which every chat request
    pays). Returns url -> {name: fn(n) timing n sequential POSTs} for ``rounds`` (body_read posts
    the chat request the gateway gets)."""
    from fastapi import FastAPI, Request
    from ray import serve

    app = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Empty:
        @app.post("/")
        async def empty(self):
            return {}

        async def body(self, request):
            return {"bytes": len(await request.body())}
        # the annotation as an object (this module's `from __future__ import annotations` would make
        # it a string the replica cannot resolve), then the route
        body.__annotations__["request"] = Request
        app.post("/body")(body)

    serve.run(Empty.bind(), name="bench_floor", route_prefix="/floor")
    body = {"model": "en", "messages": PROMPT}
    return lambda url: {"serve_floor_empty": lambda n: posts(url + "/", n, 200),
                        "serve_floor_body_read": lambda n: posts(url + "/body", n, 200, body)}


def topologies(args, uri: str, v1: str, port: int, key: str) -> dict:
    """Issue 20 item 4: the added latency of each serve topology over the in-process call, side by
    side. Both apps are deployed at once (topology=single at /single, topology=split at /split,
    same config otherwise) and the rounds interleave in-process / single / split so machine load
    hits all three alike; plus the handle hop alone (split's model deployment, no HTTP) and the
    404 answered by the gateway without a model (HTTP + proxy + gateway)."""
    from ray import serve

    from rayft.config import load
    from rayft.serve.app import build_app
    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start

    base = InProcess(uri, v1, args.model, args.max_tokens, args.threads, "transformers", args.gguf_type)
    common = [f"registry={uri}", "models=[en]", f"port={port}", "api_key_env=RAYFT_BENCH_KEY", "num_cpus=1",
              f"torch_threads={args.threads}", "blocking=false", f"max_batch_size={args.max_batch_size}",
              f"batch_wait_timeout_s={args.batch_wait_ms / 1000}", "alias_refresh_s=0.5"]
    urls = {}
    root = f"http://127.0.0.1:{port}"
    try:
        # Ray Serve's throughput-optimized mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1: direct ingress,
        # i.e. the ingress replica answers HTTP itself) allows one ingress app on the port: single only
        for topo in ("single",) if args.throughput_optimized else ("single", "split"):
            cfg = load(ServeConfig, None, [*common, f"topology={topo}", f"app_name=bench_{topo}",
                                           f"route_prefix=/{topo}"])
            if not urls:
                assert start(cfg) == f"{root}/{topo}"
            else:
                serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
            urls[topo] = f"{root}/{topo}"
        floor = None if args.throughput_optimized else serve_floor()
        for u in urls.values():
            http_load(u, key, 6, 1, args.max_tokens)  # warm: adapter loaded, connections open
        base.run(6)
        local = LocalModelServer(uri, v1, args.model, args.max_tokens, args.threads)
        per = max(1, args.requests // args.rounds)
        floors = floor(f"{root}/floor") if floor else {}
        for fn in floors.values():
            fn(10)  # warm
        out = rounds({"in_process": lambda b=base: (*b.run(per), 0),
                      "model_server_no_serve": lambda: local.run(per),
                      **{t: (lambda u=u: http_load(u, key, per, 1, args.max_tokens)) for t, u in urls.items()},
                      **{k: (lambda fn=fn: fn(per)) for k, fn in floors.items()}},
                     args.rounds)
        out["added_ms_p50_model_server_no_serve"] = out["model_server_no_serve"]["p50_ms"] - out["in_process"]["p50_ms"]
        n = max(10, args.requests // 4)
        if "split" in urls:
            out["split_handle_direct"] = handle_direct("bench_split", v1, n, args.max_tokens)
        out["gateway_only_404"] = {t: gateway_only(urls[t], key, n) for t in urls}
        for t in urls:
            out[f"added_ms_p50_{t}"] = out[t]["p50_ms"] - out["in_process"]["p50_ms"]
            out[f"added_ms_mean_{t}"] = out[t]["mean_ms"] - out["in_process"]["mean_ms"]
            if floor:  # what is ours: the added latency beyond Serve's own cost of a POST whose body is read
                out[f"added_ms_p50_{t}_beyond_serve_floor"] = (out[f"added_ms_p50_{t}"]
                                                               - out["serve_floor_body_read"]["p50_ms"])
                out[f"gateway_404_ms_p50_{t}_beyond_serve_floor"] = (out["gateway_only_404"][t]["p50_ms"]
                                                                     - out["serve_floor_body_read"]["p50_ms"])
        return out
    finally:
        serve.shutdown()
        del base


def suite(engine: str, args, uri: str, v1: str, v2: str, port: int, key: str) -> dict:
    """The whole benchmark for one engine (serve config ``engine``); returns its JSON section."""
    from ray import serve

    from rayft.config import load
    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start

    out: dict = {"engine": engine}
    t = time.perf_counter()
    base = InProcess(uri, v1, args.model, args.max_tokens, args.threads, engine, args.gguf_type)
    out["in_process_load_s"] = time.perf_counter() - t
    if engine == "llamacpp":
        out["gguf"] = {"type": args.gguf_type, "load_times": dict(base.eng.load_times)}
    if args.gen_tokens:
        out["in_process_tokens"] = tokens_per_s(base, args.gen_requests, args.gen_tokens)
        print(json.dumps({engine: {k: v for k, v in out["in_process_tokens"].items() if k != "answer_ids"}}),
              file=sys.stderr)
    cfg = load(ServeConfig, None, [f"registry={uri}", "models=[en]", f"port={port}", "api_key_env=RAYFT_BENCH_KEY",
                                   "num_cpus=1", f"torch_threads={args.threads}", "blocking=false",
                                   f"max_batch_size={args.max_batch_size}",
                                   f"batch_wait_timeout_s={args.batch_wait_ms / 1000}",
                                   "alias_refresh_s=0.5", "app_name=rayft_bench", f"engine={engine}",
                                   f"gguf_type={args.gguf_type}"])
    try:
        url = start(cfg)
        if args.gen_tokens:
            out["served_tokens"] = served_tokens_per_s(url, key, args.gen_requests, args.gen_tokens)
        if args.engine_only:
            return out
        if args.concurrency_only:  # issue 20 item 2: the batching target alone (1 vs 8 clients)
            out["concurrency"] = concurrency_sweep(url, key, args)
            out["completion_tokens"] = completion_tokens(url, key, args.max_tokens)
            out["replica_stats"] = serve.get_deployment_handle("Gateway", app_name=cfg.app_name).stats.remote() \
                .result(timeout_s=60)["stats"]  # topology=single (auto): the gateway replica holds the model
            print(json.dumps({"concurrency": out["concurrency"]}), file=sys.stderr)
            return out
        out.update(interleaved(base, url, key, args))
        out["gateway_only"] = gateway_only(url, key, args.requests)
        out["overhead_ms_p50"] = out["served_sequential"]["p50_ms"] - out["in_process"]["p50_ms"]
        # where the overhead goes (issue 20 item 4): same engine call, three ways in
        n = max(10, args.requests // 4)
        inproc = summary(*base.run(n))
        seq_lat, seq_wall, _ = http_load(url, key, n, 1, args.max_tokens)
        served = summary(seq_lat, seq_wall)
        out["overhead_breakdown"] = {"in_process": inproc, "served_sequential": served,
                                     "gateway_only_404_ms_p50": out["gateway_only"]["p50_ms"]}
        try:  # topology=split only: a model deployment to call past the proxy and gateway
            direct = handle_direct(cfg.app_name, v1, n, args.max_tokens)
            out["overhead_breakdown"].update({
                "handle_direct": direct, "handle_hop_and_replica_ms_p50": direct["p50_ms"] - inproc["p50_ms"],
                "http_proxy_gateway_ms_p50": served["p50_ms"] - direct["p50_ms"]})
        except KeyError:  # topology=single (the default for one base): no model deployment of its own
            out["overhead_breakdown"]["handle_direct"] = "n/a: topology single (see --topologies)"
        out["overhead_ms_mean"] = out["served_sequential"]["mean_ms"] - out["in_process"]["mean_ms"]
        print(json.dumps({k: out[k] for k in ("in_process", "served_sequential", "served_concurrent")}),
              file=sys.stderr)
        out["concurrency"] = concurrency_sweep(url, key, args)
        out["ttft"] = {str(c): ttft(url, key, max(c, args.ttft_requests), c, args.max_tokens)
                       for c in sorted({1, max(args.levels)})}
        print(json.dumps({"concurrency": out["concurrency"], "ttft": out["ttft"]}), file=sys.stderr)
        out["hot_swap"] = hot_swap(url, key, uri, v1, v2, args.clients, args.max_tokens, args.stream_clients)
        if args.also_unbatched:
            from rayft.serve.app import build_app
            ucfg = cfg.model_copy(update={"max_batch_size": 1})
            serve.run(build_app(ucfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
            out["concurrency_unbatched"] = concurrency_sweep(url, key, args)
            out["ttft_unbatched"] = {str(c): ttft(url, key, max(c, args.ttft_requests), c, args.max_tokens)
                                     for c in sorted({1, max(args.levels)})}
        if args.redeploy_baseline:
            out["redeploy_baseline"] = redeploy_baseline(url, key, cfg, args.clients, args.max_tokens)
        return out
    finally:
        serve.shutdown()
        del base


def compare(results: dict) -> dict:
    """Tokens/s of every engine over the transformers engine's, and greedy answer agreement."""
    ref = results.get("transformers", {})
    out = {}
    for name, r in results.items():
        row = {}
        for k in ("in_process_tokens", "served_tokens"):
            if k in r:
                row[k.replace("_tokens", "_tokens_per_s")] = r[k]["tokens_per_s"]
                if k in ref and name != "transformers":
                    row[k.replace("_tokens", "_speedup")] = r[k]["tokens_per_s"] / ref[k]["tokens_per_s"]
        if name != "transformers" and "in_process_tokens" in r and "in_process_tokens" in ref:
            row["greedy_vs_transformers"] = agreement(ref["in_process_tokens"]["answer_ids"],
                                                      r["in_process_tokens"]["answer_ids"])
            if "served_tokens" in r and "served_tokens" in ref:
                row["served_answers_equal"] = r["served_tokens"]["answer"] == ref["served_tokens"]["answer"]
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-qwen2")
    ap.add_argument("--engine", default="transformers",
                    help="comma-separated serve engines to run the suite for: transformers,llamacpp")
    ap.add_argument("--engine-only", action="store_true",
                    help="only the engine comparison (tokens/s, greedy answers), not the rest of the suite")
    ap.add_argument("--gguf-type", default="f16", help="engine=llamacpp: GGUF weight type (f16, f32, bf16, q8_0)")
    ap.add_argument("--gen-tokens", type=int, default=64,
                    help="new tokens per request for the tokens/s comparison (0: skip it)")
    ap.add_argument("--gen-requests", type=int, default=8, help="requests per tokens/s measurement")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=10, help="interleaved in-process/served rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch / llama.cpp threads, both sides")
    ap.add_argument("--clients", type=int, default=4, help="steady-load clients during the hot swap")
    ap.add_argument("--stream-clients", type=int, default=2, help="streaming clients during the hot swap")
    ap.add_argument("--levels", default="1,4,8", help="client counts for the concurrency runs")
    ap.add_argument("--ttft-requests", type=int, default=24, help="streamed requests per TTFT run")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=100.0, help="serve batch_wait_timeout_s in ms (config default 100)")
    ap.add_argument("--also-unbatched", action="store_true",
                    help="repeat the concurrency runs with max_batch_size=1 (redeploys the app)")
    ap.add_argument("--redeploy-baseline", action="store_true")
    ap.add_argument("--concurrency-only", action="store_true",
                    help="only the 1/4/8-client throughput and latency (--levels, --requests, --max-tokens)")
    ap.add_argument("--throughput-optimized", action="store_true",
                    help="start Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Serve's direct ingress etc.)")
    ap.add_argument("--topologies", action="store_true",
                    help="only the added-latency comparison of topology=single vs split vs in-process "
                         "(issue 20 item 4), --requests per path over --rounds interleaved rounds")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    args.levels = [int(x) for x in str(args.levels).split(",") if x.strip()]
    engines = [e.strip() for e in args.engine.split(",") if e.strip()]
    bad = [e for e in engines if e not in ("transformers", "llamacpp")]
    if bad or not engines:
        ap.error(f"--engine: {bad or args.engine!r}; expected transformers and/or llamacpp")

    import ray

    out = {"date": time.strftime("%Y-%m-%d"), "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
           "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
           "args": vars(args)}
    tmp = Path(tempfile.mkdtemp(prefix="rayft-serve-bench-"))
    uri, v1, v2 = build_registry(tmp, args.model)

    if args.throughput_optimized:  # read by the Serve controller/proxy/replicas: set before Ray starts
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "bench-key"
    os.environ["RAYFT_BENCH_KEY"] = key
    results = {}
    try:
        if args.topologies:
            out["topologies"] = topologies(args, uri, v1, port, key)
            engines = []
        for engine in engines:
            results[engine] = suite(engine, args, uri, v1, v2, port, key)
    finally:
        ray.shutdown()
    if engines == ["transformers"]:
        out.update(results["transformers"])  # the layout earlier RESULTS.md runs have
    elif engines:
        out["results"] = results
    if args.gen_tokens and results:
        out["engines"] = compare(results)
        print(json.dumps(out["engines"]), file=sys.stderr)
    out["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
