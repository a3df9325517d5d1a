"""`rayft serve`: deploy the Serve application and (by default) stay in the foreground."""
from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading

from .. import _env
from ..config import ConfigError
from .config import ServeConfig


def check_port(host: str, port: int) -> None:
    """ConfigError when ``host:port`` cannot be bound (in use, or not an address of this
    machine). Binds like Serve's proxy (SO_REUSEADDR), then lets go at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"host={host}: cannot resolve it ({e.strerror})") from None
    fam, _, _, _, addr = infos[0]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port={port}: {host}:{port} is already in use by another process; "
                                  "stop it or choose another port (port=...)") from None
            raise ConfigError(f"host={host} port={port}: cannot listen there ({e.strerror})") from None


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
    import ray
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        check_port(cfg.host, cfg.port)  # a new local Ray: nothing else of ours can hold the port
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

