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
import hashlib
import hmac
import json
import logging
import os
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


@serve.deployment
class ModelServer:
    """One base model; registry versions attached on demand and cached LRU per replica."""

    def __init__(self, base: dict | None, registry: str, threads: int, max_prompt_tokens: int = 0,
                 queue_timeout_s: float = 30.0):
        self.engine = Engine(base, threads, max_prompt_tokens, queue_timeout_s)
        self.registry = registry

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, model_id: str):
        line, version = model_id.split("/", 1)

        def load():
            manifest, local = Registry(self.registry, line).fetch(version)  # sha256-checked
            return self.engine.load(model_id, manifest, local)

        return await asyncio.to_thread(load)

    async def _run(self, req: dict | None) -> dict:
        mid = serve.get_multiplexed_model_id()
        try:
            h = await self.get_model(mid)
            if req is None:
                return {"loaded": mid}
            return await asyncio.to_thread(self.engine.generate, h, req)
        except IntegrityError as e:  # the detail (file names) stays in the replica log
            log.error(f"rayft: {mid}: {e}")
            return _err(409, f"model {mid} refused: its artifacts do not match the sha256 recorded at "
                             "registration", "integrity_error", "artifact_hash_mismatch")
        except RegistryError as e:
            log.error(f"rayft: {mid}: {e}")
            return _err(404, f"model {mid} could not be read from the registry", code="model_not_found")
        except EngineBusy as e:
            return _err(503, str(e), "server_busy", "server_busy", e.retry_after)
        except EngineError as e:
            return _err(400, str(e), code="context_length_exceeded" if "too long" in str(e) else None)

    async def generate(self, req: dict) -> dict:
        return await self._run(req)

    async def warm(self) -> dict:
        return await self._run(None)

    def ping(self) -> str:
        return "ok"

    def pid(self) -> int:
        """This replica's process id (tests kill it)."""
        return os.getpid()


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, cfg: dict, servers: dict, key_sha256: str):
        self.cfg = from_dict(ServeConfig, cfg)
        self.servers = servers  # base_key -> DeploymentHandle
        self.key_sha = key_sha256
        c = self.cfg
        self.router = Router(c.registry, c.models, c.languages, c.default_model, c.alias_refresh_s,
                             c.allow_unpromoted_versions)
        self.warming: dict[str, str] = {}
        self.swap_errors: dict[str, str] = {}
        # line -> {"version", "attempts", "retry_at"}: a champion that failed to load is
        # retried with exponential backoff (load_retry_s, doubling, at most MAX_LOAD_RETRY_S)
        self.failed: dict[str, dict] = {}

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
                return await self._server(line, version).options(
                    multiplexed_model_id=f"{line}/{version}").generate.remote(req)
            except RayActorError as e:
                if attempt == 2:
                    raise
                log.warning(f"rayft: a model replica died during a request ({type(e).__name__}); retrying once")
        raise AssertionError("unreachable")

    async def _complete(self, request: Request, parse) -> object:
        try:
            self._auth(request)
            body = oa.parse_body(await read_body(request))
            req = parse(body, self.cfg.max_tokens_default, self.cfg.max_tokens_limit)
            self._hot_swap()
            line, version = self.router.resolve(req["model"], oa.request_text(req))
            out = await self._generate(line, version, req)
            if "error" in out:
                e = out["error"]
                raise oa.ApiError(e["status"], e["message"], e["type"], "model", e.get("code"),
                                  e.get("retry_after"))
            model = f"{line}:{version}"
            if req["stream"]:
                return StreamingResponse(iter(oa.sse_events(req, out, model)), media_type="text/event-stream")
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
                     "swap_errors": dict(self.swap_errors),
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
    threads = cfg.torch_threads or max(1, round(cfg.num_cpus))
    servers = {k: ModelServer.options(name=f"model_{i}", num_replicas=cfg.replicas,
                                      ray_actor_options={"num_cpus": cfg.num_cpus},
                                      max_ongoing_requests=cfg.max_ongoing_requests,
                                      health_check_period_s=2.0, health_check_timeout_s=30.0)
               .bind(spec, cfg.registry, threads, cfg.max_prompt_tokens, cfg.queue_timeout_s)
               for i, (k, spec) in enumerate(bases.items())}
    key = cfg.resolved_key()
    public = to_dict(cfg) | {"api_key": ""}  # only the key's hash goes into the deployment
    return Gateway.options(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4 * cfg.max_ongoing_requests) \
        .bind(public, servers, hashlib.sha256(key.encode()).hexdigest() if key else "")
