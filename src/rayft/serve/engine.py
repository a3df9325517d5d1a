"""One base model with many LoRA adapters, generating under a lock. No Ray; the Serve replica
(``app.ModelServer``) owns one Engine.

Why a lock: the adapters live inside ONE peft model and ``set_adapter`` is global state,
so two requests must not generate at once with different adapters; on CPU torch already
uses every thread for one generation, so serializing costs little throughput.

Why deferred unloads: Serve's multiplexing LRU calls a model's ``__del__`` when it evicts
it, possibly while another request is generating, and Python's GC may call it again
later from any thread. ``Loaded.__del__`` therefore only queues its adapter name; the
engine deletes queued adapters at the start of the next locked section. Every load gets
a unique adapter name, so a stale handle can never remove an adapter a newer handle uses,
and a handle whose adapter was already evicted re-attaches it on use.
"""
from __future__ import annotations

import collections
import itertools
import re
import threading
from pathlib import Path


class EngineError(ValueError):
    """A version this engine cannot host (e.g. a LoRA on a different base model)."""


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


class Engine:
    def __init__(self, base: dict | None, threads: int = 1):
        import torch

        from ..models.spec import load_base, load_tokenizer_for

        torch.set_num_threads(max(1, threads))
        self.base_spec = base
        self.lock = threading.Lock()
        self._unload: collections.deque[str] = collections.deque()
        self._ids = itertools.count()
        self.peft = None
        self.tok = load_tokenizer_for(base) if base else None
        self.base = load_base(base, self.tok) if base else None

    # -- loading -------------------------------------------------------------------------
    def _drain(self) -> None:
        """Delete adapters whose handles were evicted. Caller holds the lock."""
        for _ in range(len(self._unload)):
            name = self._unload.popleft()
            if self.peft is None or name not in self.peft.peft_config:
                continue
            if len(self.peft.peft_config) == 1 or name in self.peft.active_adapters:
                self._unload.append(name)  # peft needs one adapter left / not the active one
                continue
            self.peft.delete_adapter(name)

    def _attach(self, name: str, path: str) -> None:
        """Caller holds the lock."""
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name).eval()
        elif name not in self.peft.peft_config:
            self.peft.load_adapter(path, adapter_name=name)
            self.peft.eval()

    def load(self, model_id: str, manifest: dict, local: Path) -> Loaded:
        """Attach a verified registry version (``local`` holds its artifacts)."""
        from ..models.spec import load_spec, manifest_spec

        spec = manifest_spec(manifest, local, model_id)
        if manifest["kind"] == "full":
            model, tok = load_spec(spec)
            return Loaded(self, model_id, manifest, local, None, model, tok)
        if self.base_spec is None or {k: spec[k] for k in ("base", "seed", "trust_remote_code")} != \
                {k: self.base_spec[k] for k in ("base", "seed", "trust_remote_code")}:
            raise EngineError(f"{model_id} is a LoRA adapter on {manifest['base_model']}, but this replica hosts "
                              f"{self.base_spec and self.base_spec['base']}")
        name = re.sub(r"\W", "_", model_id) + f"_{next(self._ids)}"
        with self.lock:
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
        system = ""
        if msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        else:
            system = h.system_prompt  # what the version was trained with
        return prompt_text(tok, system, json.dumps(msgs[:-1], ensure_ascii=False) if msgs[:-1] else "",
                           msgs[-1]["content"])

    def generate(self, h: Loaded, req: dict) -> dict:
        """{"text", "finish_reason", "prompt_tokens", "completion_tokens"} for one request."""
        import torch

        tok = h.tok
        enc = tok(self.prompt_for(h, req, tok), return_tensors="pt", add_special_tokens=False)
        kw = dict(max_new_tokens=req["max_tokens"], pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if req["temperature"] > 0:
            kw.update(do_sample=True, temperature=req["temperature"], top_p=req["top_p"])
        else:
            kw.update(do_sample=False)
        with self.lock:
            self._drain()
            if h.adapter:
                if h.adapter not in self.peft.peft_config:  # evicted while this request waited
                    self._attach(h.adapter, str(h.local / "adapter"))
                self.peft.set_adapter(h.adapter)
                model = self.peft
            else:
                model = h.model
            if req.get("seed") is not None:
                torch.manual_seed(req["seed"])
            with torch.no_grad():
                out = model.generate(**enc, **kw)
        new = out[0, enc["input_ids"].shape[1]:].tolist()
        hit_eos = bool(new) and new[-1] == tok.eos_token_id
        text = tok.decode(new, skip_special_tokens=True)
        finish = "stop" if hit_eos or len(new) < req["max_tokens"] else "length"
        for s in req["stop"]:
            i = text.find(s)
            if i >= 0:
                text, finish = text[:i], "stop"
        return {"text": text, "finish_reason": finish, "prompt_tokens": int(enc["input_ids"].shape[1]),
                "completion_tokens": len(new)}
