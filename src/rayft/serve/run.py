"""`rayft serve`: deploy the Serve application and (by default) stay in the foreground."""
from __future__ import annotations

import signal
import sys
import threading

from .. import _env
from .config import ServeConfig


def start(cfg: ServeConfig, app=None) -> str:
    """Start Serve's HTTP proxy on cfg.host:cfg.port and deploy the app; returns the base URL."""
    from ray import serve

    from .app import build_app

    cfg.check_bind()
    app = app if app is not None else build_app(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix)
    prefix = cfg.route_prefix.rstrip("/")
    return f"http://{cfg.host}:{cfg.port}{prefix}"


def run_serve(cfg: ServeConfig) -> str:
    """Deploy; with ``blocking`` wait for Ctrl-C/SIGTERM, then shut Serve down. Prints the URL."""
    from .app import build_app

    _env.apply()
    cfg.check_bind()
    app = build_app(cfg)  # registry problems surface before Ray starts
    started = _env.ray_start(log_to_driver=True)
    url = start(cfg, app)
    auth = "bearer API key required" if cfg.resolved_key() else "no API key (loopback only)"
    print(f"[rayft] serving {', '.join(cfg.models)} from {cfg.registry} at {url}/v1 (OpenAI API; {auth}); "
          f"health: {url}/health", file=sys.stderr)
    if not cfg.blocking:
        return url
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    from ray import serve
    serve.shutdown()
    if started:
        import ray
        ray.shutdown()
    return url

