"""The Ray Serve application: an OpenAI-compatible gateway in front of model deployments.

    HTTP ─► Gateway (FastAPI ingress: auth, validation, model-id routing, hot swap)
              └─► ModelServer "model_<i>" per base model: one base + LoRA adapters,
                  multiplexed per request with @serve.multiplexed (id "<line>/<version>")

Promote/rollback never redeploys anything: the gateway notices the alias move, loads the
new version through the multiplexed loader, and only then routes champion traffic to it.
Requests already running keep their version (it stays in the replica's LRU), so a swap
fails nothing — unlike a Serve rolling update, which restarts replicas.

No ``from __future__ import annotations`` here: Serve's class-based FastAPI views read
the ``request: Request`` annotations at runtime, and string annotations turn them into
body parameters (HTTP 422 on every call).
"""

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError

from ..config import ConfigError, from_dict, to_dict
from ..models.spec import base_spec
from ..registry import IntegrityError, Registry, RegistryError
from . import openai_api as oa
from .config import ServeConfig
from .context import ContextError, Contexts
from .engine import Engine, EngineBusy, EngineError
from .routing import Router

log = logging.getLogger("ray.serve")
api = FastAPI(title="rayft", docs_url=None, redoc_url=None, openapi_url=None)  # see Gateway.openapi
MAX_MODELS_PER_REPLICA = 4  # adapters are MBs; full models are not: keep the LRU small
MAX_LOAD_RETRY_S = 300.0


def base_key(base: dict) -> str:
    return json.dumps({k: base.get(k) for k in ("name", "seed", "trust_remote_code")}, sort_keys=True)


def _err(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
         retry_after: int | None = None) -> dict:
    return {"error": {"status": status, "message": message, "type": type_, "code": code,
                      "retry_after": retry_after}}


def internal_error(exc: BaseException | None = None) -> JSONResponse:
    """A 500 that says nothing about the server (paths, addresses, exception text): the detail
    is logged with the same id."""
    eid = uuid.uuid4().hex[:12]
    log.error(f"rayft: request {eid} failed", exc_info=exc or True)
    return JSONResponse(oa.ApiError(500, f"internal server error (request id {eid}); the server log has the "
                                         "details", "server_error").body(), status_code=500)


@api.exception_handler(Exception)
async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    """Last line: whatever a route did not catch is a generic 500 too (never Starlette's text)."""
    return internal_error(exc)


async def read_body(request: Request, limit: int = oa.MAX_BODY) -> bytes:
    """The body, refused (413) by Content-Length before reading, and by the bytes actually
    received for chunked bodies: reading stops as soon as they pass ``limit``."""
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.strip().isdigit() or len(cl.strip()) > 18:
            raise oa.ApiError(400, "invalid Content-Length header")
        if int(cl) > limit:
            raise oa.ApiError(413, f"request body is larger than {limit} bytes")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise oa.ApiError(413, f"request body is larger than {limit} bytes")
    return bytes(buf)


def make_engine(base: dict | None, threads: int, max_prompt_tokens: int, queue_timeout_s: float,
                engine: dict | None = None):
    """The replica's engine: ``engine`` is {"kind": "transformers"|"llamacpp", ...llamacpp options}."""
    engine = engine or {}
    if engine.get("kind") == "llamacpp":
        from .llamacpp import LlamaCppEngine
        return LlamaCppEngine(base, threads, max_prompt_tokens, queue_timeout_s, engine.get("gguf_type", "f16"),
                              engine.get("n_ctx", 0), engine.get("source", ""))
    return Engine(base, threads, max_prompt_tokens, queue_timeout_s, engine.get("num_gpus", 0.0),
                  engine.get("dtype", "auto"))


def engine_options(cfg: ServeConfig) -> dict:
    """The serve config's engine choice for the replicas; ConfigError when llamacpp is chosen but
    llama-cpp-python is not installed."""
    if cfg.engine == "llamacpp":
        import importlib.util
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError("engine=llamacpp needs llama-cpp-python: pip install 'rayft[llamacpp]' (builds "
                              "llama.cpp from source where no wheel fits), or engine=transformers")
        return {"kind": "llamacpp", "gguf_type": cfg.gguf_type, "n_ctx": cfg.n_ctx, "source": cfg.llamacpp_source}
    return {"kind": "transformers", "num_gpus": cfg.num_gpus, "dtype": cfg.dtype}


def replica_options(cfg: ServeConfig) -> dict:
    """Ray actor options of a model replica: its CPU share, and its GPU share when num_gpus > 0."""
    return {"num_cpus": cfg.num_cpus} | ({"num_gpus": cfg.num_gpus} if cfg.num_gpus else {})


@serve.deployment
class ModelServer:
    """One base model; registry versions attached on demand and cached LRU per replica.

    Concurrent requests are batched (``_batch_loop``: the requests that queued up while a batch
    ran, up to ``max_batch_size``, plus stragglers within ``batch_wait_timeout_s`` after a batch
    of several; on the transformers engine, requests that arrive while a batch runs join it at the
    next decode step: continuous batching); the engine runs
    the requests of a batch that use the same version as ONE left-padded batch and
    different versions (adapters) one group after another. Streaming requests ride in the
    same batches; their tokens leave the generating thread through an asyncio queue."""

    def __init__(self, base: dict | None, registry: str, threads: int, max_prompt_tokens: int = 0,
                 queue_timeout_s: float = 30.0, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.0,
                 engine: dict | None = None):
        self.engine = make_engine(base, threads, max_prompt_tokens, queue_timeout_s, engine)
        self.registry = registry
        self.max_batch = max_batch_size
        self.batch_wait_s = batch_wait_timeout_s
        self._pending: collections.deque | None = None  # (job, future) waiting for the next batch
        self._plock: threading.Lock | None = None  # the generating thread takes joiners from _pending
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._last_end = 0.0
        self._inflight, self._peak = 0, 0  # requests in _batch now; most at once since the last batch began

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, model_id: str):
        line, version = model_id.split("/", 1)

        def load():
            manifest, local = Registry(self.registry, line).fetch(version)  # sha256-checked
            return self.engine.load(model_id, manifest, local)

        return await asyncio.to_thread(load)

    async def _batch(self, job) -> tuple:
        """Queue one prepared request for the next batch: ("ok", result) | ("error", exc)."""
        if self._pending is None:
            self._pending, self._arrived, self._plock = collections.deque(), asyncio.Event(), threading.Lock()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._inflight += 1
        self._peak = max(self._peak, self._inflight)
        with self._plock:
            self._pending.append((job, fut))
        self._arrived.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.ensure_future(self._batch_loop())
        try:
            return await fut
        finally:
            self._inflight -= 1

    async def _batch_loop(self) -> None:
        """One batch at a time, formed when the engine is free: every request that arrived while
        the last batch ran joins the next one (up to ``max_batch``). Serve's ``@serve.batch``
        closes the next batch ``batch_wait_timeout_s`` after its first request even while the
        engine is still busy, which on this path fragmented 8 clients into batches of 1.7 on
        average (benchmarks/RESULTS.md). When n > 1 requests were in the replica at once since the
        last batch began, the next batch also waits, at most ``batch_wait_s`` from the last batch's
        end, until n are queued (the clients just answered coming back: the wait ends as soon as
        they are), which also merges client groups that fell out of phase; a lone client never
        waits.

        While a batch runs on the transformers engine, requests that arrive join it at the next
        decode step (continuous batching, ``Engine.run_batch``'s ``take``) as long as it has
        fewer than ``max_batch`` rows and the oldest waiting request is for the same version and
        sampling setting; each caller gets its answer when its own row ends."""
        loop = asyncio.get_running_loop()
        pending, lock = self._pending, self._plock
        continuous = getattr(self.engine, "continuous", False)
        while True:
            while not pending:
                self._arrived.clear()
                if not pending:
                    await self._arrived.wait()
            # clients were this many at once since the last batch began: wait (from its end) until as
            # many requests are queued; a lone client (peak 1) never waits
            want = min(self.max_batch, max(1, self._peak))
            deadline = self._last_end + (self.batch_wait_s if want > 1 else 0.0)
            while True:
                self._arrived.clear()  # before counting: an arrival after the count wakes the wait
                left = deadline - loop.time()
                if len(pending) >= want or left <= 0:
                    break
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    pass
            with lock:
                items = [pending.popleft() for _ in range(min(len(pending), self.max_batch))]
            items = [(j, f) for j, f in items if not f.done()]  # callers gone while waiting
            if not items:
                continue
            jobs = [j for j, _ in items]
            running = {id(j): (j, f) for j, f in items}  # this batch's jobs, plus those that join it
            self._peak = self._inflight  # this batch and whatever queued behind it

            def settle(f, r) -> None:
                if not f.done():
                    f.set_result(("error", r) if isinstance(r, BaseException) else ("ok", r))

            def done(j, r) -> None:  # the generating thread: this row ended
                if isinstance(r, BaseException) and j.on_event is not None:
                    j.on_event("error", r)
                loop.call_soon_threadsafe(settle, running[id(j)][1], r)

            def take(key, n: int) -> list:  # the generating thread, between decode steps
                out = []
                with lock:
                    while pending and len(out) < n:
                        j, f = pending[0]
                        if f.done():  # caller gone
                            pending.popleft()
                            continue
                        if j.group_key(0) != key:  # the oldest waiting request needs another batch
                            break
                        pending.popleft()
                        running[id(j)] = (j, f)
                        out.append(j)
                return out

            try:
                if continuous:
                    out = await asyncio.to_thread(self.engine.run_batch, jobs, take, done, self.max_batch)
                else:
                    out = await asyncio.to_thread(self.engine.run_batch, jobs)
            except Exception as e:  # the engine failed as a whole: every request of the batch gets it
                out = [e] * len(jobs)
                for j, f in running.values():
                    if not f.done() and j.on_event is not None:
                        j.on_event("error", e)
                    settle(f, e)
            self._last_end = loop.time()
            for (j, f), r in zip(items, out):
                if isinstance(r, BaseException) and not f.done() and j.on_event is not None and not continuous:
                    j.on_event("error", r)
                settle(f, r)

    @staticmethod
    def _error(mid: str, e: BaseException) -> dict:
        if isinstance(e, IntegrityError):  # the detail (file names) stays in the replica log
            log.error(f"rayft: {mid}: {e}")
            return _err(409, f"model {mid} refused: its artifacts do not match the sha256 recorded at "
                             "registration", "integrity_error", "artifact_hash_mismatch")
        if isinstance(e, RegistryError):
            log.error(f"rayft: {mid}: {e}")
            return _err(404, f"model {mid} could not be read from the registry", code="model_not_found")
        if isinstance(e, EngineBusy):
            return _err(503, str(e), "server_busy", "server_busy", e.retry_after)
        if isinstance(e, EngineError):
            return _err(400, str(e), code="context_length_exceeded" if "too long" in str(e) else None)
        raise e

    async def generate(self, req: dict, mid: str = "") -> dict:
        mid = mid or serve.get_multiplexed_model_id()
        try:
            h = await self.get_model(mid)
            kind, out = await self._batch(self.engine.prepare(h, req))
            if kind == "error":
                raise out
            return out
        except (IntegrityError, RegistryError, EngineBusy, EngineError) as e:
            return self._error(mid, e)

    async def generate_stream(self, req: dict, mid: str = ""):
        """Streaming (call with ``handle.options(stream=True)``): yields {"text": piece} as
        tokens are generated, then {"end": result}; or one {"error": ...}. When the caller
        goes away (client disconnect: Serve cancels this generator), the request's generation
        stops at the next token; the rest of its batch goes on."""
        mid = mid or serve.get_multiplexed_model_id()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def on_event(kind: str, x) -> None:  # from the generating thread (or the loop: errors)
            loop.call_soon_threadsafe(events.put_nowait, (kind, x))

        try:
            h = await self.get_model(mid)
            job = self.engine.prepare(h, req, on_event, cancel)
        except (IntegrityError, RegistryError, EngineBusy, EngineError) as e:
            yield self._error(mid, e)
            return
        task = asyncio.ensure_future(self._batch(job))
        task.add_done_callback(lambda t: None if t.cancelled() or t.exception() is None
                               else events.put_nowait(("crash", t.exception())))
        try:
            while True:
                kind, x = await events.get()
                if kind == "text":
                    yield {"text": x}
                elif kind == "end":
                    yield {"end": x}
                    return
                elif kind == "error":
                    yield self._error(mid, x)
                    return
                else:
                    raise x
        finally:
            cancel.set()  # a no-op when the row is done; else stops it at the next token

    async def warm(self, mid: str = "") -> dict:
        mid = mid or serve.get_multiplexed_model_id()
        try:
            await self.get_model(mid)
            return {"loaded": mid}
        except (IntegrityError, RegistryError, EngineBusy, EngineError) as e:
            return self._error(mid, e)

    def stats(self) -> dict:
        """Engine counters (requests, generated_tokens, cancelled, batches, max_batch) and the
        last finished requests, for tests and benchmarks."""
        with self.engine._mu:  # the generating thread updates them
            return {"stats": dict(self.engine.stats), "recent": list(self.engine.recent),
                    "engine": type(self.engine).__name__, "loads": dict(getattr(self.engine, "load_times", {}))}

    def ping(self) -> str:
        return "ok"

    def pid(self) -> int:
        """This replica's process id (tests kill it)."""
        return os.getpid()


class _Call:
    """``handle.method.remote(...)`` for a method of an in-process ModelServer (LocalServer)."""

    def __init__(self, fn, mid: str):
        self.fn, self.mid = fn, mid

    def remote(self, *args):
        return self.fn(*args, mid=self.mid) if self.mid else self.fn(*args)


class _LocalStream:
    """What ``handle.options(stream=True).generate_stream.remote()`` returns, for an in-process
    ModelServer: ``__anext__`` and ``cancel()`` (closes the generator: its ``finally`` stops the
    generation at the next token)."""

    def __init__(self, agen):
        self.agen = agen

    def __aiter__(self):
        return self

    def __anext__(self):
        return self.agen.__anext__()

    def cancel(self) -> None:
        async def close():
            try:
                await self.agen.aclose()
            except (RuntimeError, StopAsyncIteration):  # still running: its own cancellation closes it
                pass
        asyncio.get_running_loop().create_task(close())


class LocalServer:
    """The ``topology=single`` stand-in for a ModelServer DeploymentHandle: the same ModelServer
    code (multiplexed LRU, batching, streaming) run inside the gateway's own replica, so a
    request costs one Serve hop (proxy -> gateway) instead of two (... -> handle -> model replica)."""

    def __init__(self, server, mid: str = ""):
        self.server, self.mid = server, mid

    def options(self, multiplexed_model_id: str = "", **_):
        """Like DeploymentHandle.options; ``stream`` needs nothing here (generate_stream is an
        async generator either way)."""
        return LocalServer(self.server, multiplexed_model_id)

    def __getattr__(self, name: str):
        if name == "generate_stream":
            s = self.server
            return _Call(lambda req, mid="": _LocalStream(s.generate_stream(req, mid)), self.mid)
        if name == "ping":
            async def ping():
                return self.server.ping()
            return _Call(ping, "")
        return _Call(getattr(self.server, name), self.mid)


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, cfg: dict, servers: dict, key_sha256: str, local: dict | None = None):
        self.cfg = from_dict(ServeConfig, cfg)
        if local is not None:  # topology=single: {base_key: ModelServer init args}, built in this replica
            servers = {k: LocalServer(ModelServer.func_or_class(*args)) for k, args in local.items()}
        self.servers = servers  # base_key -> DeploymentHandle (or LocalServer)
        self.key_sha = key_sha256
        c = self.cfg
        self.router = Router(c.registry, c.models, c.languages, c.default_model, c.alias_refresh_s,
                             c.allow_unpromoted_versions)
        # context blocks ("message mode", context.py), re-read as often as the aliases; each chat
        # request carries its line's block to the replica
        self.contexts = Contexts(c.models, c.context, c.context_file, c.registry, c.alias_refresh_s)
        for line in c.models:
            self.contexts.get(line)
        self.warming: dict[str, str] = {}
        self.handles: dict[tuple, object] = {}
        self.swap_errors: dict[str, str] = {}
        # line -> {"version", "attempts", "retry_at"}: a champion that failed to load is
        # retried with exponential backoff (load_retry_s, doubling, at most MAX_LOAD_RETRY_S)
        self.failed: dict[str, dict] = {}

    def stats(self) -> dict:
        """topology=single: the in-process model's engine counters (ModelServer.stats), for tests and
        benchmarks; with topology=split ask the model deployment."""
        (server,) = self.servers.values()
        if not isinstance(server, LocalServer):
            raise RuntimeError("topology=split: call stats() on the model deployment (model_<i>)")
        return server.server.stats()

    # -- helpers -------------------------------------------------------------------------
    def _authed(self, request: Request) -> bool:
        if not self.key_sha:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        got = hashlib.sha256(token.strip().encode("utf-8", "replace")).hexdigest()
        return scheme.lower() == "bearer" and hmac.compare_digest(got, self.key_sha)

    def _auth(self, request: Request) -> None:
        if not self._authed(request):
            raise oa.ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                              "authentication_error", code="invalid_api_key")

    def _server(self, line: str, version: str):
        m = self.router.manifest(line, version)
        if m is None:
            raise oa.ApiError(404, f"model {line}:{version} could not be read from the registry",
                              code="model_not_found")
        if m["kind"] == "full":
            return next(iter(self.servers.values()))
        h = self.servers.get(base_key(m["base_model"]))
        if h is None:
            raise oa.ApiError(400, f"{line}:{version} is an adapter for base model {m['base_model']['name']}, "
                                   "which this server does not host; restart `rayft serve` to add it")
        return h

    def _handle(self, line: str, version: str, stream: bool):
        """The model deployment's handle with this version's multiplexed id, made once per
        (line, version, stream) instead of per request (``options`` builds a new handle)."""
        key = (line, version, stream)
        h = self.handles.get(key)
        if h is None:
            if len(self.handles) > 256:
                self.handles.clear()
            h = self.handles[key] = self._server(line, version).options(
                multiplexed_model_id=f"{line}/{version}", stream=stream)
        return h

    def _hot_swap(self) -> None:
        for line, version in self.router.pending().items():
            f = self.failed.get(line)
            if f and f["version"] == version and time.monotonic() < f["retry_at"]:
                continue  # failed to load: retried after the backoff
            if self.warming.get(line) != version:
                self.warming[line] = version
                asyncio.get_running_loop().create_task(self._warm(line, version))

    async def _warm(self, line: str, version: str) -> None:
        try:
            out = await self._server(line, version).options(
                multiplexed_model_id=f"{line}/{version}").warm.remote()
            if "error" in out:
                raise RuntimeError(out["error"]["message"])
            self.router.mark_ready(line, version)
            self.swap_errors.pop(line, None)
            self.failed.pop(line, None)
            log.info(f"rayft: {line} now serves {version}")
        except Exception as e:  # keep serving the old champion; retry with backoff; /health reports why
            f = self.failed.get(line)
            attempts = f["attempts"] + 1 if f and f["version"] == version else 1
            delay = min(self.cfg.load_retry_s * 2 ** (attempts - 1), MAX_LOAD_RETRY_S)
            self.failed[line] = {"version": version, "attempts": attempts, "retry_at": time.monotonic() + delay}
            self.swap_errors[line] = f"{version} failed to load ({attempts} attempt(s), next in {delay:g} s): " \
                                     f"{str(e)[:300]}"
            log.error(f"rayft: {line}: champion {version} failed to load (attempt {attempts}, retry in "
                      f"{delay:g} s), still serving {self.router.serving.get(line)}: {e}")
        finally:
            if self.warming.get(line) == version:
                del self.warming[line]

    async def _generate(self, line: str, version: str, req: dict) -> dict:
        """One generation; retried once when the replica died under it (generation is
        idempotent: the client has seen nothing yet), on another or the restarted replica."""
        for attempt in (1, 2):
            try:
                return await self._handle(line, version, False).generate.remote(req)
            except RayActorError as e:
                if attempt == 2:
                    raise
                log.warning(f"rayft: a model replica died during a request ({type(e).__name__}); retrying once")
        raise AssertionError("unreachable")

    async def _open_stream(self, line: str, version: str, req: dict):
        """(response generator, its first item) of a streaming generation; retried once like
        ``_generate`` when the replica died before the first item (the client has seen nothing)."""
        for attempt in (1, 2):
            gen = self._handle(line, version, True).generate_stream.remote(req)
            try:
                return gen, await gen.__anext__()
            except RayActorError as e:
                if attempt == 2:
                    raise
                log.warning(f"rayft: a model replica died during a request ({type(e).__name__}); retrying once")
            except BaseException:
                gen.cancel()
                raise
        raise AssertionError("unreachable")

    @staticmethod
    def _model_error(out: dict) -> oa.ApiError:
        e = out["error"]
        return oa.ApiError(e["status"], e["message"], e["type"], "model", e.get("code"), e.get("retry_after"))

    async def _sse(self, gen, item: dict, req: dict, model: str):
        """OpenAI chunks as the replica generates; closing this (client disconnect) cancels the
        replica's generator, which stops the generation."""
        s = oa.Stream(req, model)
        try:
            while True:
                if "text" in item:
                    yield s.text(item["text"])
                elif "end" in item:
                    for ev in s.end(item["end"]):
                        yield ev
                    return
                else:
                    yield s.error(self._model_error(item))
                    return
                item = await gen.__anext__()
        except StopAsyncIteration:  # the replica ended without a result: say so, never hang
            yield s.error(oa.ApiError(500, "the model server ended the stream early", "server_error"))
        except Exception:
            eid = uuid.uuid4().hex[:12]
            log.error(f"rayft: stream {eid} failed", exc_info=True)
            yield s.error(oa.ApiError(500, f"internal server error (request id {eid}); the server log has "
                                           "the details", "server_error"))
        finally:
            gen.cancel()  # no-op when it finished; else stops the generation on the replica

    async def _complete(self, request: Request, parse) -> object:
        try:
            self._auth(request)
            body = oa.parse_body(await read_body(request))
            req = parse(body, self.cfg.max_tokens_default, self.cfg.max_tokens_limit)
            self._hot_swap()
            line, version = self.router.resolve(req["model"], oa.request_text(req))
            model = f"{line}:{version}"
            if req["kind"] == "chat" and (ctx := self.contexts.get(line)):
                req["context"] = ctx  # the replica puts it in the system turn (engine.system_turn)
            if req["stream"]:
                # the first item (first text, or an error) decides the status line
                gen, first = await self._open_stream(line, version, req)
                if "error" in first:
                    raise self._model_error(first)
                return StreamingResponse(self._sse(gen, first, req, model), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            out = await self._generate(line, version, req)
            if "error" in out:
                raise self._model_error(out)
            return JSONResponse(oa.response(req, out, model))
        except oa.ApiError as e:
            return e.response()
        except Exception:  # never leak exception text (paths, node addresses, RayTaskError)
            return internal_error()

    # -- routes --------------------------------------------------------------------------
    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        return await self._complete(request, oa.parse_chat)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._complete(request, oa.parse_completion)

    @api.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._auth(request)
        except oa.ApiError as e:
            return e.response()
        self._hot_swap()
        data = []
        for line, st in self.router.status().items():
            for mid, ver in ((line, st["serving"]), (f"{line}:previous", st["previous"])):
                if ver:
                    data.append({"id": mid, "object": "model", "created": 0, "owned_by": "rayft", "version": ver})
        return {"object": "list", "data": data}

    @api.get("/health")
    async def health(self, request: Request):
        """Liveness/readiness for anyone (model deployments answer: 200, else 503); which
        versions serve, swaps and load failures only for an authenticated caller (or when
        the server has no key, i.e. is bound to loopback)."""
        self._hot_swap()
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ping.remote() for h in self.servers.values())), 30)
            ok = True
        except Exception:
            ok = False
        body = {"status": "ok" if ok else "unavailable"}
        if self._authed(request):
            now = time.monotonic()
            body |= {"models": self.router.status(), "swapping": dict(self.warming),
                     "swap_errors": dict(self.swap_errors), "contexts": self.contexts.status(),
                     "load_failures": {ln: {"version": f["version"], "attempts": f["attempts"],
                                            "retry_in_s": round(max(0.0, f["retry_at"] - now), 1)}
                                       for ln, f in self.failed.items()}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request):
        """The OpenAPI schema, only with ``api_docs: true`` (and the key, when one is set)."""
        try:
            self._docs_allowed(request)
        except oa.ApiError as e:
            return e.response()
        return JSONResponse(api.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html
        try:
            self._docs_allowed(request)
        except oa.ApiError as e:
            return e.response()
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                                   title="rayft")

    def _docs_allowed(self, request: Request) -> None:
        if not self.cfg.api_docs:
            raise oa.ApiError(404, "not found (API docs are off: serve config api_docs=true)", code="not_found")
        self._auth(request)


def build_app(cfg: ServeConfig):
    """The bound Serve application for ``cfg`` (one ModelServer per distinct base model)."""
    bases: dict[str, dict | None] = {}
    full = False
    for line in cfg.models:
        try:
            reg = Registry(cfg.registry, line)
            reg.require_exists()  # a mistyped path is not "no champion"
            champ = reg.aliases().get("champion")
            m = reg.get(champ) if champ else None
        except RegistryError as e:
            raise ConfigError(f"registry: {e}") from None
        if m and m["kind"] == "lora":
            b = m["base_model"]
            bases.setdefault(base_key(b), base_spec(b["name"], b.get("seed", 0), cfg.trust_remote_code))
        full = full or bool(m and m["kind"] == "full")
    if not bases and not full:
        raise ConfigError(f"no champion in any of {cfg.models} under {cfg.registry}: evaluate and promote a "
                          "version first (rayft eval ... registry.promote=true, or rayft registry promote)")
    if not bases:
        bases["full"] = None
    try:
        Contexts(cfg.models, cfg.context, cfg.context_file, cfg.registry, cfg.alias_refresh_s).check()
    except ContextError as e:
        raise ConfigError(str(e)) from None
    threads = cfg.torch_threads or max(1, round(cfg.num_cpus))
    engine = engine_options(cfg)
    key = cfg.resolved_key()
    public = to_dict(cfg) | {"api_key": ""}  # only the key's hash goes into the deployment
    key_sha = hashlib.sha256(key.encode()).hexdigest() if key else ""
    args = {k: (spec, cfg.registry, threads, cfg.max_prompt_tokens, cfg.queue_timeout_s, cfg.max_batch_size,
                cfg.batch_wait_timeout_s, engine) for k, spec in bases.items()}  # ModelServer's init args
    if topology_of(cfg, bases) == "single":  # gateway + model in one replica: one hop per request
        return Gateway.options(num_replicas=cfg.replicas, ray_actor_options=replica_options(cfg),
                               max_ongoing_requests=4 * cfg.max_ongoing_requests,
                               health_check_period_s=2.0, health_check_timeout_s=30.0) \
            .bind(public, {}, key_sha, args)
    servers = {k: ModelServer.options(name=f"model_{i}", num_replicas=cfg.replicas,
                                      ray_actor_options=replica_options(cfg),
                                      max_ongoing_requests=cfg.max_ongoing_requests,
                                      health_check_period_s=2.0, health_check_timeout_s=30.0)
               .bind(*args[k]) for i, k in enumerate(bases)}
    return Gateway.options(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4 * cfg.max_ongoing_requests) \
        .bind(public, servers, key_sha)


def topology_of(cfg: ServeConfig, bases: dict) -> str:
    """``single`` or ``split`` for this config and the base models its lines need (see ServeConfig)."""
    if cfg.topology == "single" and len(bases) > 1:
        raise ConfigError(f"topology=single hosts one base model, but the lines {cfg.models} use {len(bases)} "
                          "different ones: use topology=split (or auto)")
    if cfg.topology == "auto":
        return "single" if len(bases) == 1 else "split"
    return cfg.topology
