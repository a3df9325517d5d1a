"""ServeConfig: everything `rayft serve` reads, field by field."""
from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import model_validator

from ..config import ConfigError, FsPath, Section, opt


class ServeConfig(Section):
    registry: FsPath = opt("runs/registry", "registry root (local path or pyarrow URI such as s3://bucket/registry)")
    models: list[str] = opt(["default"], "registry model lines to host, e.g. [en, zh]. A request's model is "
                            "a line (its champion), line:champion, line:previous, line:<version>, a bare "
                            "version id, or auto (route by the prompt's language)", min_length=1)
    languages: dict[str, str] = opt({}, "language -> model line for `auto`/alias requests, e.g. {en: en, "
                                    "zh: zh} (separate English and Chinese models)")
    context: dict[str, str] = opt({}, "line -> context block (\"message mode\": memory injection without "
                                  "training), e.g. {en: 'The user is Ana; she prefers short answers.'}. Put in "
                                  "the system turn of every chat request for that line, after the system prompt "
                                  "(the version's trained one, or the request's own system message, which "
                                  "replaces only the trained one: the block is always applied); counts toward "
                                  "the prompt-token limit; /v1/completions (raw text) gets none. Lines without "
                                  "context/context_file use the registry's block (rayft registry context)")
    context_file: dict[str, str] = opt({}, "line -> file (local path or s3://... URI) holding the line's context "
                                       "block (UTF-8, at most 256 KiB); re-read when it changes, checked every "
                                       "alias_refresh_s, so memories update without a redeploy; an empty file = "
                                       "no block")
    default_model: str = opt("", "line used when language routing does not decide ('' = first of models)")
    trust_remote_code: bool = opt(False, "run a base model's own Python code (transformers trust_remote_code). "
                                  "Only this setting turns it on: a registry manifest never can")
    host: str = opt("127.0.0.1", "HTTP bind address; anything but loopback requires an API key")
    port: int = opt(8000, "HTTP port", ge=1, le=65535)
    app_name: str = opt("rayft", "Ray Serve application name")
    route_prefix: str = opt("/", "HTTP route prefix of the application")
    api_key: str = opt("", "bearer token clients must send (prefer api_key_env: this one ends up in files)")
    api_key_env: str = opt("RAYFT_API_KEY", "environment variable holding the bearer token (used when set)")
    api_key_file: str = opt("", "file holding the bearer token (first line; e.g. a secret mounted on the "
                            "cluster); used when api_key_env is not set")
    engine: Literal["transformers", "llamacpp"] = opt(
        "transformers", "what generates: transformers (torch; LoRA adapters on one shared base, batched) or "
        "llamacpp (llama.cpp through llama-cpp-python, pip install 'rayft[llamacpp]': each version merged into "
        "its base and converted to GGUF once, cached by artifact digest; one request at a time per replica, "
        "several times faster per request on CPU)")
    gguf_type: Literal["f16", "f32", "bf16", "q8_0"] = opt(
        "f16", "engine=llamacpp: weight type of the converted GGUF (f32: the transformers engine's numbers, "
        "2x the memory traffic; q8_0: smaller and faster, answers may drift)")
    n_ctx: int = opt(0, "engine=llamacpp: context window in tokens (0: the model's training context, at most "
                     "4096); prompt + max_tokens must fit", ge=0)
    llamacpp_source: str = opt("", "engine=llamacpp: a llama.cpp source tree (or unpacked llama-cpp-python sdist) "
                               "holding convert_hf_to_gguf.py and gguf-py/ ('': the installed llama-cpp-python's "
                               "sdist, downloaded once into the rayft cache)")
    topology: Literal["auto", "single", "split"] = opt(
        "auto", "single: the gateway and the model run in one deployment (one Serve hop per request, the "
        "lowest added latency; each replica holds the gateway and the model); split: a 0-CPU gateway "
        "deployment in front of one model deployment per base model (a model replica that dies mid-request "
        "is retried by the gateway; the only choice for lines on different base models); auto: single "
        "when every served line uses one base model, else split")
    replicas: int = opt(1, "replicas per base-model deployment", ge=1)
    num_cpus: float = opt(1.0, "CPUs per model replica (fractional allowed)", gt=0)
    num_gpus: float = opt(0.0, "GPUs per model replica (fractional allowed, e.g. 0.5 for two replicas per GPU; "
                          "0: CPU). With a GPU the replica's model runs on cuda in `dtype`", ge=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "weights and compute dtype of a replica's model (engine=transformers): auto = float32 on CPU, "
        "bfloat16 on a GPU that supports it, else float16")
    torch_threads: int = opt(0, "torch (engine=llamacpp: llama.cpp) threads per model replica (0: from num_cpus)", ge=0)
    max_ongoing_requests: int = opt(32, "concurrent requests per replica before Serve queues them", ge=1)
    max_batch_size: int = opt(8, "most concurrent requests a model replica generates in one batch (one "
                              "forward pass per token for all of them; on the transformers engine new requests "
                              "join a running batch at the next token: continuous batching; 1 = no batching)", ge=1)
    batch_wait_timeout_s: float = opt(0.1, "when n > 1 requests were in a replica at once since its last batch began, "
                                      "how long (from the last batch's end) it waits for n to queue before it "
                                      "starts a new batch (clients answered together come back over tens of ms). "
                                      "The wait ends as soon as they are queued; a lone client never "
                                      "waits; 0 = never wait", ge=0, le=10)
    alias_refresh_s: float = opt(1.0, "how often the gateway re-reads the registry aliases (hot swap delay)", gt=0)
    max_tokens_default: int = opt(64, "max_tokens when a request does not set it", ge=1)
    max_tokens_limit: int = opt(512, "largest max_tokens a request may ask for", ge=1)
    max_prompt_tokens: int = opt(0, "longest prompt in tokens; longer ones get HTTP 400 before generation "
                                 "(0: the model's context length minus the request's max_tokens)", ge=0)
    queue_timeout_s: float = opt(30.0, "how long a request waits for a replica busy with another model version "
                                 "before HTTP 503 with Retry-After", ge=0)
    allow_unpromoted_versions: bool = opt(False, "also serve versions the gate did not accept when a request "
                                          "names them (default: only champion, previous and accepted versions)")
    load_retry_s: float = opt(5.0, "first retry delay after a champion fails to load (doubles each time, "
                              "at most 300 s)", gt=0)
    api_docs: bool = opt(False, "serve /openapi.json and /docs (off: they describe the API to anyone)")
    blocking: bool = opt(True, "keep `rayft serve` in the foreground until Ctrl-C (false: deploy and return)")

    @model_validator(mode="after")
    def _routing(self):
        if self.default_model and self.default_model not in self.models:
            raise ConfigError(f"default_model {self.default_model!r} is not one of models {self.models}")
        bad = {k: v for k, v in self.languages.items() if v not in self.models}
        if bad:
            raise ConfigError(f"languages: {bad} route to lines not in models {self.models}")
        for key in ("context", "context_file"):
            bad = sorted(set(getattr(self, key)) - set(self.models))
            if bad:
                raise ConfigError(f"{key}: lines {bad} are not in models {self.models}")
        big = sorted(k for k, v in self.context.items() if len(v.encode()) > 256 * 1024)
        if big:
            raise ConfigError(f"context: the block for {big} is over 256 KiB (it goes into every prompt)")
        both = sorted(set(self.context) & set(self.context_file))
        if both:
            raise ConfigError(f"context and context_file both set for {both}: use one per line")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                              f"({self.max_batch_size}): a replica never sees more requests at once")
        if self.engine == "llamacpp" and self.num_gpus:
            raise ConfigError("num_gpus applies to engine=transformers; engine=llamacpp runs on CPU here "
                              "(llama-cpp-python built without CUDA)")
        if self.max_tokens_limit < self.max_tokens_default:
            raise ConfigError(f"max_tokens_limit ({self.max_tokens_limit}) must be >= max_tokens_default "
                              f"({self.max_tokens_default})")
        return self

    def resolved_key(self) -> str:
        """The API key in force: $api_key_env when set, else the first line of api_key_file,
        else api_key ('' = no auth)."""
        import os
        key = (os.environ.get(self.api_key_env) if self.api_key_env else None) or ""
        if not key.strip() and self.api_key_file:
            path = os.path.expanduser(self.api_key_file)
            try:
                with open(path, encoding="utf-8") as f:
                    key = f.readline()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"api_key_file: cannot read {path}: {type(e).__name__}") from None
            if not key.strip():
                raise ConfigError(f"api_key_file: {path} is empty")
        return key.strip() or self.api_key

    def check_bind(self) -> None:
        """Refuse to expose an unauthenticated server beyond this machine."""
        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        if not loopback and not self.resolved_key():
            raise ConfigError(f"host={self.host} exposes the server beyond this machine: set an API key "
                              f"(${self.api_key_env} or api_key) or bind 127.0.0.1")
