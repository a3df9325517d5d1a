"""The llama.cpp engine (serve config ``engine: llamacpp``): each registry version runs as its own
GGUF model in llama.cpp through llama-cpp-python, behind the same Serve replica, gateway and
OpenAI app as the transformers ``Engine`` (same endpoints, streaming, hot swap, rollback).

* Loading (``load``, called by the replica's multiplexed loader when the gateway warms a new
  champion): the version is merged and converted to GGUF once (``to_gguf.gguf_for``, cached by
  artifact digest), then opened as a ``llama_cpp.Llama`` (weights memory-mapped). Only after
  that does the gateway route champion traffic to it; the old version's ``Llama`` stays in the
  replica's LRU (instant rollback) and is freed when Serve evicts it and no request still uses
  it (plain reference counting: this handle has no ``__del__`` for Serve to call early).
* Prompt and tokens: the prompt text is built exactly as the transformers engine builds it
  (``Engine.prompt_for``: the tokenizer's chat template, the version's system prompt) and
  tokenized by the version's Hugging Face tokenizer; those token ids go to llama.cpp, and
  generated ids are decoded by the same tokenizer (``Job``). The GGUF's vocabulary is the
  same one (the converter copies it), so the model sees the same ids as under transformers and
  stop strings, EOS and streaming pieces behave the same. (llama-cpp-python's
  ``create_chat_completion`` would re-render the GGUF's chat template itself; we keep one
  prompt builder so both engines answer the same prompt.)
* Decoding: ``Llama.generate`` token by token; temperature 0 = llama.cpp's greedy sampler,
  else temperature + top_p (top_k and min_p off, as in the transformers engine) seeded by the
  request's seed (a random one otherwise).
* Concurrency: a ``Llama`` context holds one sequence, so a replica generates one request at a
  time (the requests of a Serve batch run one after another, each streaming as it goes); a
  lock per model makes that explicit. llama.cpp uses ``threads`` CPU threads.
"""
from __future__ import annotations

import collections
import random
import threading
import time
from pathlib import Path

from .engine import Engine, EngineError, Job

DEFAULT_MAX_CTX = 4096


class LlamaLoaded:
    """A registry version loaded as a llama.cpp model (the engine's model handle)."""

    adapter = None  # Job.group_key: one group per model object

    def __init__(self, model_id: str, manifest: dict, local: Path, llm, tok, gguf: Path):
        self.model_id, self.manifest, self.local = model_id, manifest, local
        self.model, self.llm, self.tok, self.gguf = llm, llm, tok, gguf
        self.system_prompt = manifest.get("system_prompt", "")
        self.lock = threading.Lock()


class LlamaCppEngine(Engine):
    continuous = False  # a llama.cpp context holds one sequence: no joining a running batch

    def __init__(self, base: dict | None, threads: int = 1, max_prompt_tokens: int = 0,
                 queue_timeout_s: float = 30.0, gguf_type: str = "f16", n_ctx: int = 0, source: str = ""):
        import llama_cpp  # noqa: F401  (fail at replica start, not at the first request)

        self.base_spec = base
        self.threads = max(1, threads)
        self.max_prompt_tokens, self.queue_timeout_s = max_prompt_tokens, queue_timeout_s
        self.gguf_type, self.n_ctx, self.source = gguf_type, n_ctx, source
        self._mu = threading.Lock()
        self.stats = collections.Counter()  # requests, generated_tokens, cancelled, batches, max_batch
        self.recent: collections.deque[dict] = collections.deque(maxlen=64)
        self.load_times: dict[str, dict] = {}  # model_id -> {"gguf_s", "open_s", "gguf"}

    # -- loading -------------------------------------------------------------------------
    def load(self, model_id: str, manifest: dict, local: Path) -> LlamaLoaded:
        from llama_cpp import Llama

        from ..models.spec import load_tokenizer_for, manifest_spec
        from .to_gguf import ConvertError, gguf_context_length, gguf_for

        trust = bool(self.base_spec and self.base_spec["trust_remote_code"])
        spec = manifest_spec(manifest, local, model_id, trust_remote_code=trust)
        if manifest["kind"] == "lora" and (self.base_spec is None or {
                k: spec[k] for k in ("base", "seed", "trust_remote_code")} != {
                k: self.base_spec[k] for k in ("base", "seed", "trust_remote_code")}):
            raise EngineError(f"{model_id} is a LoRA adapter on {manifest['base_model']}, but this replica hosts "
                              f"{self.base_spec and self.base_spec['base']}")
        t0 = time.perf_counter()
        try:
            path = gguf_for(manifest, spec, self.gguf_type, self.source)
        except ConvertError as e:
            raise RuntimeError(f"{model_id}: {e}") from None
        t1 = time.perf_counter()
        tok = load_tokenizer_for(spec)
        train_ctx = gguf_context_length(path) or DEFAULT_MAX_CTX
        n_ctx = self.n_ctx or min(train_ctx, DEFAULT_MAX_CTX)
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(512, n_ctx), n_threads=self.threads,
                    n_threads_batch=self.threads, verbose=False)
        if llm.n_vocab() < len(tok):
            raise EngineError(f"{model_id}: the GGUF has {llm.n_vocab()} tokens, the tokenizer {len(tok)}")
        with self._mu:
            self.load_times[model_id] = {"gguf_s": round(t1 - t0, 3), "open_s": round(time.perf_counter() - t1, 3),
                                         "gguf": path.name, "n_ctx": n_ctx}
        return LlamaLoaded(model_id, manifest, local, llm, tok, path)

    def context_length(self, h: LlamaLoaded) -> int | None:
        return int(h.llm.n_ctx())

    # -- generation ----------------------------------------------------------------------
    def run_batch(self, jobs: list[Job]) -> list[dict | BaseException]:
        """One result (or the exception that request got) per job, in order; the jobs run one
        after another (a llama.cpp context holds one sequence)."""
        out: list[dict | BaseException] = []
        for j in jobs:
            try:
                out.append(self._generate_one(j, len(jobs), j is jobs[0]))
            except EngineError as e:
                out.append(e)
        return out

    def _generate_one(self, j: Job, batch: int, first: bool) -> dict:
        h: LlamaLoaded = j.h
        req, tok = j.req, h.tok
        eos = tok.eos_token_id
        greedy = req["temperature"] <= 0
        tokens: list[int] = []
        with h.lock:
            if not j.cancel.is_set():
                h.llm.set_seed(req["seed"] % (1 << 32) if req.get("seed") is not None
                               else random.getrandbits(32))
                gen = h.llm.generate(j.ids, temp=0.0 if greedy else req["temperature"],
                                     top_p=1.0 if greedy else req["top_p"], top_k=0, min_p=0.0,
                                     typical_p=1.0, repeat_penalty=1.0)
                try:
                    for t in gen:
                        tokens.append(int(t))
                        if j.on_event:
                            j.push(int(t), tok)
                        if t == eos or len(tokens) >= req["max_tokens"] or j.cancel.is_set():
                            break
                finally:
                    gen.close()
        res = j.result(tokens, tok)
        self._account(j, res, batch, first)
        j.finish(res)
        return res
