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

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from ..config import ConfigError, from_dict, to_dict
from ..models.spec import base_spec
from ..registry import IntegrityError, Registry, RegistryError
from . import openai_api as oa
from .config import ServeConfig
from .engine import Engine, EngineError
from .routing import Router

log = logging.getLogger("ray.serve")
api = FastAPI(title="rayft", docs_url=None, redoc_url=None)
MAX_MODELS_PER_REPLICA = 4  # adapters are MBs; full models are not: keep the LRU small


def base_key(base: dict) -> str:
    return json.dumps({k: base.get(k) for k in ("name", "seed", "trust_remote_code")}, sort_keys=True)


def _err(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"status": status, "message": message, "type": type_, "code": code}}


@serve.deployment
class ModelServer:
    """One base model; registry versions attached on demand and cached LRU per replica."""

    def __init__(self, base: dict | None, registry: str, threads: int):
        self.engine = Engine(base, threads)
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
        except IntegrityError as e:
            return _err(409, f"model {mid} refused: {e}", "integrity_error", "artifact_hash_mismatch")
        except RegistryError as e:
            return _err(404, str(e), code="model_not_found")
        except EngineError as e:
            return _err(400, str(e))

    async def generate(self, req: dict) -> dict:
        return await self._run(req)

    async def warm(self) -> dict:
        return await self._run(None)

    def ping(self) -> str:
        return "ok"


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(self, cfg: dict, servers: dict, key_sha256: str):
        self.cfg = from_dict(ServeConfig, cfg)
        self.servers = servers  # base_key -> DeploymentHandle
        self.key_sha = key_sha256
        c = self.cfg
        self.router = Router(c.registry, c.models, c.languages, c.default_model, c.alias_refresh_s)
        self.manifests: dict[tuple[str, str], dict] = {}
        self.warming: dict[str, str] = {}
        self.swap_errors: dict[str, str] = {}
        self.failed: dict[str, str] = {}  # line -> champion version that failed to load (not retried)

    # -- helpers -------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        if not self.key_sha:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        got = hashlib.sha256(token.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(got, self.key_sha):
            raise oa.ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                              "authentication_error", code="invalid_api_key")

    def _server(self, line: str, version: str):
        m = self.manifests.get((line, version))
        if m is None:
            try:
                m = self.manifests[(line, version)] = Registry(self.cfg.registry, line).get(version)
            except RegistryError as e:
                raise oa.ApiError(404, str(e), code="model_not_found") from None
        if m["kind"] == "full":
            return next(iter(self.servers.values()))
        h = self.servers.get(base_key(m["base_model"]))
        if h is None:
            raise oa.ApiError(400, f"{line}:{version} is an adapter for base model {m['base_model']['name']}, "
                                   "which this server does not host; restart `rayft serve` to add it")
        return h

    def _hot_swap(self) -> None:
        for line, version in self.router.pending().items():
            if self.warming.get(line) != version and self.failed.get(line) != version:
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
        except Exception as e:  # keep serving the old champion; /health reports why
            self.swap_errors[line] = f"{version} failed to load: {e}"
            self.failed[line] = version
            log.error(f"rayft: {line}: champion {version} failed to load, still serving "
                      f"{self.router.serving.get(line)}: {e}")
        finally:
            if self.warming.get(line) == version:
                del self.warming[line]

    async def _complete(self, request: Request, parse) -> object:
        try:
            self._auth(request)
            req = parse(oa.parse_body(await request.body()), self.cfg.max_tokens_default, self.cfg.max_tokens_limit)
            self._hot_swap()
            line, version = self.router.resolve(req["model"], oa.request_text(req))
            out = await self._server(line, version).options(
                multiplexed_model_id=f"{line}/{version}").generate.remote(req)
            if "error" in out:
                e = out["error"]
                raise oa.ApiError(e["status"], e["message"], e["type"], "model", e.get("code"))
            model = f"{line}:{version}"
            if req["stream"]:
                return StreamingResponse(iter(oa.sse_events(req, out, model)), media_type="text/event-stream")
            return JSONResponse(oa.response(req, out, model))
        except oa.ApiError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            return JSONResponse(e.body(), status_code=e.status, headers=headers)
        except Exception as e:  # never leak a traceback page; the replica log has the detail
            log.exception("rayft: request failed")
            return JSONResponse(oa.ApiError(500, f"internal error: {type(e).__name__}: {e}", "server_error").body(),
                                status_code=500)

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
            return JSONResponse(e.body(), status_code=e.status, headers={"WWW-Authenticate": "Bearer"})
        self._hot_swap()
        data = []
        for line, st in self.router.status().items():
            for mid, ver in ((line, st["serving"]), (f"{line}:previous", st["previous"])):
                if ver:
                    data.append({"id": mid, "object": "model", "created": 0, "owned_by": "rayft", "version": ver})
        return {"object": "list", "data": data}

    @api.get("/health")
    async def health(self):
        """Unauthenticated liveness/readiness: model deployments answer; which versions serve."""
        self._hot_swap()
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ping.remote() for h in self.servers.values())), 30)
            ok = True
        except Exception:
            ok = False
        body = {"status": "ok" if ok else "unavailable", "models": self.router.status(),
                "swapping": dict(self.warming), "swap_errors": dict(self.swap_errors)}
        return JSONResponse(body, status_code=200 if ok else 503)


def build_app(cfg: ServeConfig):
    """The bound Serve application for ``cfg`` (one ModelServer per distinct base model)."""
    bases: dict[str, dict | None] = {}
    full = False
    for line in cfg.models:
        try:
            reg = Registry(cfg.registry, line)
            champ = reg.aliases().get("champion")
            m = reg.get(champ) if champ else None
        except RegistryError as e:
            raise ConfigError(f"registry: {e}") from None
        if m and m["kind"] == "lora":
            b = m["base_model"]
            bases.setdefault(base_key(b), base_spec(b["name"], b.get("seed", 0), b.get("trust_remote_code", False)))
        full = full or bool(m and m["kind"] == "full")
    if not bases and not full:
        raise ConfigError(f"no champion in any of {cfg.models} under {cfg.registry}: evaluate and promote a "
                          "version first (rayft eval ... registry.promote=true, or rayft registry promote)")
    if not bases:
        bases["full"] = None
    threads = cfg.torch_threads or max(1, round(cfg.num_cpus))
    servers = {k: ModelServer.options(name=f"model_{i}", num_replicas=cfg.replicas,
                                      ray_actor_options={"num_cpus": cfg.num_cpus},
                                      max_ongoing_requests=cfg.max_ongoing_requests).bind(spec, cfg.registry, threads)
               for i, (k, spec) in enumerate(bases.items())}
    key = cfg.resolved_key()
    public = to_dict(cfg) | {"api_key": ""}  # only the key's hash goes into the deployment
    return Gateway.options(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4 * cfg.max_ongoing_requests) \
        .bind(public, servers, hashlib.sha256(key.encode()).hexdigest() if key else "")
