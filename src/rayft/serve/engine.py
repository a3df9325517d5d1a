"""One base model with many LoRA adapters. No Ray; the Serve replica (``app.ModelServer``)
owns one Engine.

Concurrency (``ModelGate``): the adapters live inside ONE peft model and ``set_adapter`` is
global state, so two requests must not generate at once with DIFFERENT adapters. The replica
hands the engine batches (``run_batch``); requests for the same version and sampling setting
run as one left-padded batch, and on this engine the batch is continuous: requests that arrive
while it runs are prefilled and join it at the next decode step (``_decode_group``, a short
loop over the model's forward with transformers' ``DynamicCache``; transformers' own
``ContinuousBatchingManager`` targets GPUs and measured ~100x slower on this CPU). A request
for another version waits until the running ones finish, at most ``queue_timeout_s``; then it
gets ``EngineBusy`` (HTTP 503 with Retry-After) instead of an unbounded wait. Attaching/deleting
adapters and seeded sampling (``torch.manual_seed`` is process-global) run alone, seeded
sampling through ``generate``. Every generation is bounded: prompts longer than
``max_prompt_tokens`` (default: the model's context length minus ``max_tokens``) are refused
before generation (HTTP 400), and ``max_tokens`` is capped by the serve config. Different
adapters run one after another rather than per-row peft ``adapter_names``, because those install
forward hooks on shared modules, which is not thread-safe.

Why deferred unloads: Serve's multiplexing LRU calls a model's ``__del__`` when it evicts
it, possibly while another request is generating, and Python's GC may call it again
later from any thread. ``Loaded.__del__`` therefore only queues its adapter name; the
engine deletes queued adapters at the start of the next locked section. Every load gets
a unique adapter name, so a stale handle can never remove an adapter a newer handle uses,
and a handle whose adapter was already evicted re-attaches it on use.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import itertools
import os
import re
import threading
from pathlib import Path


def system_turn(trained: str, own: str | None, context: str = "") -> str:
    """The system turn of a chat prompt: the request's own system message when it sends one,
    else the system prompt the version was trained with; then the line's context block (serve
    config ``context``/``context_file`` or the registry's, see ``context.py``), after a blank
    line. The block is applied whatever the request sends: it is the server's, not the client's."""
    base = own if own is not None else (trained or "")
    return "\n\n".join(p for p in (base, context) if p)


class EngineError(ValueError):
    """A version this engine cannot host (e.g. a LoRA on a different base model), or a request
    it refuses before generating (prompt too long): HTTP 400."""


class EngineBusy(RuntimeError):
    """The replica is generating for another version and did not free up in time: HTTP 503."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ModelGate:
    """A shared/exclusive gate keyed by model state: holders of the same key run together; a
    different key waits until they are done (fair: once a different key waits, newcomers for
    the current key queue behind it). ``on_enter`` runs when a key takes the gate."""

    def __init__(self):
        self.cv = threading.Condition()
        self.key: object = None
        self.active = 0
        self.waiting: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def hold(self, key: object, timeout: float, on_enter=None):
        def free() -> bool:
            if self.active == 0:
                return True
            return self.key == key and sum(self.waiting.values()) == self.waiting[key]

        with self.cv:
            self.waiting[key] += 1
            try:
                ok = self.cv.wait_for(free, timeout)
            finally:
                self.waiting[key] -= 1
                if not self.waiting[key]:
                    del self.waiting[key]
            if not ok:
                raise EngineBusy(f"the model server is busy with another model version; retry in a few "
                                 f"seconds (waited {timeout:g} s)", retry_after=max(1, round(timeout)))
            if self.active == 0:
                self.key = key
                if on_enter is not None:
                    on_enter()
            self.active += 1
        try:
            yield
        finally:
            with self.cv:
                self.active -= 1
                if self.active == 0:
                    self.key = None
                self.cv.notify_all()


class Loaded:
    """A registry version ready to generate: an adapter on the shared base, or a full model."""

    def __init__(self, engine: "Engine", model_id: str, manifest: dict, local: Path, adapter: str | None,
                 model=None, tok=None):
        self.engine, self.model_id, self.manifest, self.local = engine, model_id, manifest, local
        self.adapter, self.model, self.tok = adapter, model, tok
        self.system_prompt = manifest.get("system_prompt", "")

    def __del__(self):
        if self.adapter:
            self.engine._unload.append(self.adapter)


def placement(num_gpus: float, dtype: str = "auto", cuda: bool | None = None,
              bf16: bool | None = None) -> tuple[str, str]:
    """(device, dtype) of a replica's model: cuda when the replica holds a GPU share, else cpu;
    ``dtype`` auto = float32 on CPU, bfloat16 on a GPU that supports it, else float16. Raises
    EngineError when a GPU was asked for but torch sees none (``cuda``/``bf16``: for tests)."""
    import torch

    if not num_gpus:
        return "cpu", "float32" if dtype == "auto" else dtype
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        raise EngineError(f"num_gpus={num_gpus:g}, but torch sees no CUDA device on this replica's node "
                          f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    if dtype == "auto":
        bf16 = torch.cuda.is_bf16_supported() if bf16 is None else bf16
        dtype = "bfloat16" if bf16 else "float16"
    return "cuda", dtype


class Engine:
    def __init__(self, base: dict | None, threads: int = 1, max_prompt_tokens: int = 0,
                 queue_timeout_s: float = 30.0, num_gpus: float = 0.0, dtype: str = "auto"):
        import torch

        from ..models.spec import load_base, load_tokenizer_for

        torch.set_num_threads(max(1, threads))
        self.device, self.dtype = placement(num_gpus, dtype)
        self.base_spec = base
        self.max_prompt_tokens, self.queue_timeout_s = max_prompt_tokens, queue_timeout_s
        self.gate = ModelGate()
        self._inflight: collections.Counter[str] = collections.Counter()  # adapter -> requests using it
        self._mu = threading.Lock()
        self._unload: collections.deque[str] = collections.deque()
        self._ids = itertools.count()
        self.stats = collections.Counter()  # requests, generated_tokens, cancelled, batches, max_batch
        self.recent: collections.deque[dict] = collections.deque(maxlen=64)  # last finished requests
        self.peft = None
        self.tok = load_tokenizer_for(base) if base else None
        self.base = load_base(base, self.tok, self.dtype, self.device) if base else None

    # -- loading -------------------------------------------------------------------------
    def _exclusive(self):
        return self.gate.hold(object(), self.queue_timeout_s)

    def _drain(self) -> None:
        """Delete adapters whose handles were evicted. Caller holds the gate exclusively."""
        for _ in range(len(self._unload)):
            name = self._unload.popleft()
            if self.peft is None or name not in self.peft.peft_config:
                continue
            if len(self.peft.peft_config) == 1 or name in self.peft.active_adapters or self._inflight[name]:
                self._unload.append(name)  # peft needs one adapter left / not the active one
                continue
            self.peft.delete_adapter(name)

    def _attach(self, name: str, path: str) -> None:
        """Caller holds the gate exclusively."""
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name).eval()
        elif name not in self.peft.peft_config:
            self.peft.load_adapter(path, adapter_name=name)
            self.peft.eval()

    def load(self, model_id: str, manifest: dict, local: Path) -> Loaded:
        """Attach a verified registry version (``local`` holds its artifacts)."""
        from ..models.spec import load_spec, manifest_spec

        # remote code only as the serve config's base spec allows it, never as the manifest says
        spec = manifest_spec(manifest, local, model_id,
                             trust_remote_code=bool(self.base_spec and self.base_spec["trust_remote_code"]))
        if manifest["kind"] == "full":
            model, tok = load_spec(spec, self.dtype, self.device)
            return Loaded(self, model_id, manifest, local, None, model, tok)
        if self.base_spec is None or {k: spec[k] for k in ("base", "seed", "trust_remote_code")} != \
                {k: self.base_spec[k] for k in ("base", "seed", "trust_remote_code")}:
            raise EngineError(f"{model_id} is a LoRA adapter on {manifest['base_model']}, but this replica hosts "
                              f"{self.base_spec and self.base_spec['base']}")
        name = re.sub(r"\W", "_", model_id) + f"_{next(self._ids)}"
        with self._exclusive():
            self._drain()
            self._attach(name, spec["adapter"])
        return Loaded(self, model_id, manifest, local, name, tok=self.tok)

    # -- generation ----------------------------------------------------------------------
    def prompt_for(self, h: Loaded, req: dict, tok) -> str:
        if req["kind"] == "completion":
            return req["prompt"]
        import json

        from ..data.tokenize import prompt_text

        msgs = list(req["messages"])
        own = msgs.pop(0)["content"] if msgs[0]["role"] == "system" else None
        system = system_turn(h.system_prompt, own, req.get("context", ""))
        return prompt_text(tok, system, json.dumps(msgs[:-1], ensure_ascii=False) if msgs[:-1] else "",
                           msgs[-1]["content"])

    def context_length(self, h: Loaded) -> int | None:
        model = h.model if h.model is not None else self.base
        n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def prompt_limit(self, h: Loaded, max_tokens: int) -> int:
        """Most prompt tokens a request may send: max_prompt_tokens (0 = no own cap) and the
        model's context length minus the tokens the request may generate."""
        limits = [self.max_prompt_tokens] if self.max_prompt_tokens > 0 else []
        ctx = self.context_length(h)
        if ctx:
            limits.append(ctx - max_tokens)
        return min(limits) if limits else 1 << 62

    def prepare(self, h: Loaded, req: dict, on_event=None, cancel: threading.Event | None = None) -> Job:
        """Validate and tokenize one request (EngineError before any generation). ``on_event``
        (streaming, see ``Job``) is called from the generating thread; setting ``cancel``
        stops this request's generation at the next token (the others in its batch go on)."""
        tok = h.tok
        text = self.prompt_for(h, req, tok)
        limit = self.prompt_limit(h, req["max_tokens"])
        if limit < 1:
            raise EngineError(f"max_tokens={req['max_tokens']} leaves no room for a prompt in this model's "
                              f"context of {self.context_length(h)} tokens")
        if len(text) > 64 * (limit + 16):  # no token is that long: refuse without tokenizing megabytes
            raise EngineError(f"the prompt is too long: {len(text)} characters; this model accepts at most "
                              f"{limit} prompt tokens with max_tokens={req['max_tokens']}")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) > limit:
            raise EngineError(f"the prompt is too long: {len(ids)} tokens; this model accepts at most {limit} "
                              f"prompt tokens with max_tokens={req['max_tokens']} (context {self.context_length(h)}, "
                              f"max_prompt_tokens {self.max_prompt_tokens or 'unset'})"
                              + ("; the line's context block counts toward it" if req.get("context") else ""))
        return Job(h, req, list(ids), on_event, cancel or threading.Event())

    def generate(self, h: Loaded, req: dict) -> dict:
        """{"text", "finish_reason", "prompt_tokens", "completion_tokens"} for one request."""
        out = self.run_batch([self.prepare(h, req)])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    # run_batch joins newly arrived requests into the running batch (``take``/``done``); the
    # llama.cpp engine (one sequence per context) does not
    continuous = True

    def run_batch(self, jobs: list[Job], take=None, done=None, max_rows: int = 8) -> list[dict | BaseException]:
        """Generate for many requests; one result (or the exception that request got) per job,
        in order. Jobs for the same model version and sampling settings share ONE left-padded
        batch (one forward pass per step for all of them); different versions (adapters) run one
        group after another, since ``set_adapter`` is global. Seeded sampling runs alone (torch's
        RNG is process-global).

        Continuous batching: with ``take(key, n)`` (up to n more prepared jobs whose
        ``group_key`` is ``key``, or none) the group's decode loop admits new requests at every
        step while it has fewer than ``max_rows`` rows: they are prefilled and their KV caches
        joined to the running batch, so a request never waits for a whole batch to finish. Each
        job (given or taken) is passed to ``done(job, result)`` as soon as its row ends. Models
        whose cache is not a plain per-layer KV cache (sliding window, hybrid) fall back to one
        ``generate`` per group without joining."""
        groups: dict[object, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault(j.group_key(i), []).append(i)
        out: list[dict | BaseException | None] = [None] * len(jobs)
        for key, idx in groups.items():
            group = [jobs[i] for i in idx]
            try:
                res = None
                if take is not None and group[0].joinable():
                    res = self._decode_group(group, key, take, done, max_rows)
                if res is None:
                    res = self._generate_group(group)
                    if done is not None:
                        for j, r in zip(group, res):
                            done(j, r)
            except (EngineBusy, EngineError) as e:
                res = [e] * len(idx)
                if done is not None:
                    for j in group:
                        done(j, e)
            for i, r in zip(idx, res):
                out[i] = r
        return out  # type: ignore[return-value]

    @contextlib.contextmanager
    def _model_for(self, h: Loaded, seeded: bool):
        """The model to run ``h`` on, holding the gate for its version (alone when seeded)."""
        with self._mu:
            if h.adapter:
                self._inflight[h.adapter] += 1
        try:
            if h.adapter:
                if h.adapter not in self.peft.peft_config:  # evicted while this request waited
                    with self._exclusive():
                        self._drain()
                        if h.adapter not in self.peft.peft_config:
                            self._attach(h.adapter, str(h.local / "adapter"))
                elif self._unload:  # opportunistic: only when the gate is free right now
                    with contextlib.suppress(EngineBusy), self.gate.hold(object(), 0):
                        self._drain()
                model, key = self.peft, ("adapter", h.adapter)
                enter = lambda: self.peft.set_adapter(h.adapter)  # noqa: E731
            else:
                model, key, enter = h.model, ("full", id(h.model)), None
            # seeded sampling runs alone: torch's RNG is process-global
            with self.gate.hold(object() if seeded else key, self.queue_timeout_s,
                                on_enter=enter if not seeded else None):
                if seeded and enter:
                    enter()
                yield model
        finally:
            if h.adapter:
                with self._mu:
                    self._inflight[h.adapter] -= 1

    def _account(self, j: Job, res: dict, batch: int, first: bool) -> None:
        """Count one finished request in the engine counters (both engines)."""
        cancelled = j.cancel.is_set() and not j.stop_hit and res["completion_tokens"] < j.req["max_tokens"] \
            and not res.get("eos")
        with self._mu:
            self.stats["requests"] += 1
            self.stats["generated_tokens"] += res["completion_tokens"]
            self.stats["cancelled"] += cancelled
            self.stats["batches"] += first
            self.stats["max_batch"] = max(self.stats["max_batch"], batch)
            self.recent.append({"completion_tokens": res["completion_tokens"], "cancelled": cancelled,
                                "batch": batch, "max_tokens": j.req["max_tokens"]})

    def _decode_group(self, jobs: list[Job], key, take, done, max_rows: int) -> list[dict] | None:
        """Continuous batching for one version and sampling setting (see ``run_batch``); None
        when this model's cache cannot be joined (the caller then uses ``generate``)."""
        import torch

        from transformers.cache_utils import DynamicLayer

        h, req = jobs[0].h, jobs[0].req
        tok = h.tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        base = h.model if h.model is not None else self.base
        cfg = getattr(base, "config", None)
        types = getattr(cfg, "layer_types", None) or []
        if getattr(cfg, "use_sliding_window", False) or any(t != "full_attention" for t in types):
            return None
        sample = req["temperature"] > 0
        if sample:
            from transformers import TemperatureLogitsWarper, TopPLogitsWarper

            warp = [TemperatureLogitsWarper(req["temperature"])] + \
                ([TopPLogitsWarper(req["top_p"])] if req["top_p"] < 1 else [])

        def pick(logits):  # [B, vocab] -> [B]
            if not sample:
                return logits.argmax(-1)
            for w in warp:
                logits = w(None, logits)
            return torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]

        results: dict[int, dict] = {}
        rows: list[Job] = []
        gen: list[list[int]] = []
        peak: list[int] = []
        cache = mask = last = None
        pending, first = list(jobs), True
        ckw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"  # 5.x renamed it
        with self._model_for(h, seeded=False) as model, torch.no_grad():
            while pending or rows:
                if pending:  # prefill the newcomers, then join their caches to the running batch
                    width = max(len(j.ids) for j in pending)
                    ids = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in pending], dtype=torch.long)
                    m = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in pending],
                                     dtype=torch.long)
                    ids, m = ids.to(self.device), m.to(self.device)
                    out = model(input_ids=ids, attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0),
                                use_cache=True, logits_to_keep=1)
                    new = getattr(out, "cache", None) or out.past_key_values
                    if any(type(layer) is not DynamicLayer for layer in new.layers):
                        if rows:  # cannot happen for a model that passed the check above
                            raise RuntimeError("the KV cache changed type during a batch")
                        return None
                    toks = pick(out.logits[:, -1].float())
                    if cache is None:
                        cache, mask = new, m
                    else:
                        L, n = mask.shape[1], m.shape[1]
                        w = max(L, n)
                        fpad = torch.nn.functional.pad
                        for a, b in zip(cache.layers, new.layers):
                            a.keys = torch.cat([fpad(a.keys, (0, 0, w - L, 0)), fpad(b.keys, (0, 0, w - n, 0))])
                            a.values = torch.cat([fpad(a.values, (0, 0, w - L, 0)),
                                                  fpad(b.values, (0, 0, w - n, 0))])
                        mask = torch.cat([fpad(mask, (w - L, 0)), fpad(m, (w - n, 0))])
                    last = toks if last is None else torch.cat([last, toks])
                    rows += pending
                    gen += [[] for _ in pending]
                    peak += [0] * len(pending)
                    step_rows = list(range(len(rows) - len(pending), len(rows)))
                    pending = []
                else:  # one decode step for every row
                    mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
                    out = model(input_ids=last[:, None], attention_mask=mask,
                                position_ids=mask.sum(1, keepdim=True) - 1, use_cache=True, logits_to_keep=1,
                                **{ckw: cache})
                    cache = getattr(out, "cache", None) or out.past_key_values
                    last = pick(out.logits[:, -1].float())
                    step_rows = list(range(len(rows)))
                toks = last.tolist()
                ended = []
                for r in step_rows:
                    j, t = rows[r], int(toks[r])
                    peak[r] = max(peak[r], len(rows))
                    if not j.cancel.is_set():
                        gen[r].append(t)
                        if j.on_event:
                            j.push(t, tok)
                    if j.cancel.is_set() or t == tok.eos_token_id or len(gen[r]) >= j.req["max_tokens"]:
                        ended.append(r)
                for r in ended:
                    j = rows[r]
                    res = j.result(gen[r], tok)
                    self._account(j, res, peak[r], first)
                    first = False
                    j.finish(res)
                    results[id(j)] = res
                    if done is not None:
                        done(j, res)
                if ended:  # drop finished rows, then the padding columns no row needs any more
                    gone = set(ended)
                    keep = [r for r in range(len(rows)) if r not in gone]
                    rows, gen, peak = [rows[r] for r in keep], [gen[r] for r in keep], [peak[r] for r in keep]
                    if rows:
                        idx = torch.tensor(keep, device=mask.device)
                        mask, last = mask[idx], last[idx]
                        lead = int((mask.sum(0) == 0).long().cumprod(0).sum())
                        mask = mask[:, lead:]
                        for layer in cache.layers:
                            layer.keys, layer.values = layer.keys[idx, :, lead:], layer.values[idx, :, lead:]
                    else:
                        cache = mask = last = None
                if len(rows) < max_rows:
                    pending = list(take(key, max_rows - len(rows)) or [])
        return [results[id(j)] for j in jobs]

    def _generate_group(self, jobs: list[Job]) -> list[dict]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        h, req = jobs[0].h, jobs[0].req
        tok = h.tok
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(j.ids) for j in jobs)
        # left padding: every row's last prompt token sits in the last column (the attention
        # mask hides the padding; position ids follow the mask)
        input_ids = torch.tensor([[pad] * (width - len(j.ids)) + j.ids for j in jobs], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(j.ids)) + [1] * len(j.ids) for j in jobs], dtype=torch.long)
        if self.device != "cpu":
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        limits = torch.tensor([j.req["max_tokens"] for j in jobs])

        class RowStop(StoppingCriteria):  # per row: its own max_tokens, or cancelled (disconnect, stop string)
            def __call__(self, ids, scores, **kw):
                n = ids.shape[1] - width
                done = (n >= limits) | torch.tensor([j.cancel.is_set() for j in jobs])
                for j, d in zip(jobs, done.tolist()):
                    if d and j.ended_at is None:
                        j.ended_at = n  # the batch pads this row from here on
                return done

        sample = req["temperature"] > 0
        kw = dict(max_new_tokens=int(limits.max()), pad_token_id=pad, eos_token_id=tok.eos_token_id,
                  attention_mask=mask, stopping_criteria=StoppingCriteriaList([RowStop()]))
        if sample:
            kw.update(do_sample=True, temperature=req["temperature"], top_p=req["top_p"])
        else:
            kw.update(do_sample=False)
        if any(j.on_event for j in jobs):
            kw["streamer"] = _RowStreamer(jobs, tok)
        seeded = sample and req.get("seed") is not None
        with self._model_for(h, seeded) as model:
            if seeded:
                torch.manual_seed(req["seed"])
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, **kw)
        results = []
        for row, j in zip(out[:, width:].tolist(), jobs):
            res = j.result(row, tok)
            self._account(j, res, len(jobs), j is jobs[0])
            j.finish(res)
            results.append(res)
        return results


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` could still become a stop string."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    return n


class Job:
    """One prepared request. Streaming: ``on_event("text", piece)`` for each piece of text that
    is final, then ``on_event("end", result)`` once, as soon as this row is done (not when the
    whole batch is)."""

    def __init__(self, h: Loaded, req: dict, ids: list[int], on_event, cancel: threading.Event):
        self.h, self.req, self.ids, self.on_event, self.cancel = h, req, ids, on_event, cancel
        self.tokens: list[int] = []
        self.sent = ""
        self.done = self.ended = self.stop_hit = False
        self.ended_at: int | None = None

    def joinable(self) -> bool:
        """Whether this request may share a continuously batched decode loop (not seeded
        sampling: torch's RNG is process-global, so a seeded request runs alone)."""
        return self.req["temperature"] <= 0 or self.req.get("seed") is None

    def group_key(self, i: int) -> tuple:
        r = self.req
        version = self.h.adapter or id(self.h.model)
        if r["temperature"] <= 0:
            return (version, "greedy")
        if r.get("seed") is not None:
            return (version, "seeded", i)  # alone
        return (version, "sample", r["temperature"], r["top_p"])

    def result(self, row: list[int], tok) -> dict:
        """The answer from this row's generated tokens (the batch pads finished rows)."""
        new = row[:min(self.req["max_tokens"], self.ended_at or len(row))]
        if tok.eos_token_id in new:  # the row finished there; the rest is padding
            new = new[:new.index(tok.eos_token_id) + 1]
        hit_eos = bool(new) and new[-1] == tok.eos_token_id
        text, stopped = cut_at_stop(tok.decode(new, skip_special_tokens=True), self.req["stop"])
        finish = "stop" if hit_eos or stopped or len(new) < self.req["max_tokens"] else "length"
        return {"text": text, "finish_reason": finish, "prompt_tokens": len(self.ids),
                "completion_tokens": len(new), "eos": hit_eos}

    def push(self, token: int, tok) -> None:
        """The next generated token (streaming): send the text that is now final."""
        if self.done:
            return
        self.tokens.append(token)
        if token == tok.eos_token_id or len(self.tokens) >= self.req["max_tokens"]:
            self.done = True
            self.finish(self.result(self.tokens, tok))
            return
        if self.cancel.is_set():
            self.done = True
            return
        text, stopped = cut_at_stop(tok.decode(self.tokens, skip_special_tokens=True), self.req["stop"])
        if stopped:  # nothing after a stop string is sent: stop generating this row
            self.stop_hit = True
            self.cancel.set()
            self.done = True
            self.finish(self.result(self.tokens, tok))
            return
        if text.endswith("\ufffd"):
            return  # a multi-byte character is not complete yet
        self._send(text[:len(text) - _held_back(text, self.req["stop"])])

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.on_event("text", text[len(self.sent):])
            self.sent = text

    def finish(self, res: dict) -> None:
        if self.on_event is None or self.ended:
            return
        self.ended = True
        self._send(res["text"])
        self.on_event("end", res)


class _RowStreamer:
    """transformers streamer for a batch: ``put`` gets the prompt first, then one token per row
    per step; each streaming row decodes its own tokens (``TextIteratorStreamer`` handles only
    batch size 1)."""

    def __init__(self, jobs: list[Job], tok):
        self.jobs, self.tok, self.prompt_seen = jobs, tok, False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for j, t in zip(self.jobs, value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if j.on_event:
                j.push(int(t), self.tok)

    def end(self) -> None:
        pass
