"""Scrape the Ray nodes' Prometheus endpoints while something runs (tests of rayft's Ray custom
metrics, train/raymetrics.py). Each node's metrics agent serves ``/metrics`` on its
``MetricsExportPort`` (``ray.nodes()``); the text is parsed with ``prometheus_client``'s parser.

A dead worker's gauges age out of the agent after ~2 export intervals (Ray 2.60's
OpenTelemetry recorder), so values are read *while* the run goes, in a background thread,
and kept: ``series(name, run=..., rank=...)`` is every value seen, in order.
"""
from __future__ import annotations

import threading
import time
import urllib.request


def node_metrics_urls() -> list[str]:
    """``http://<node ip>:<metrics export port>/metrics`` of every alive node of the connected Ray."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def parse(text: str, prefix: str = "") -> list[tuple[str, dict, float]]:
    """(sample name, labels, value) of every sample whose name starts with ``prefix``."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name.startswith(prefix)]


class Scraper(threading.Thread):
    """``with Scraper("ray_rayft_") as sc: ...``: scrapes every ``interval_s`` until the block ends."""

    def __init__(self, prefix: str, interval_s: float = 1.0, keys: tuple[str, ...] = ("run", "rank")):
        super().__init__(daemon=True, name="prometheus-scraper")
        self.prefix, self.interval_s, self.keys = prefix, interval_s, keys
        self.urls = node_metrics_urls()
        self.seen: dict[tuple, list[float]] = {}
        self.scrapes, self.errors = 0, []
        self._halt, self._lock = threading.Event(), threading.Lock()

    def scrape_once(self) -> None:
        for url in self.urls:
            try:
                text = urllib.request.urlopen(url, timeout=5).read().decode("utf-8", "replace")
            except OSError as e:
                self.errors.append(f"{url}: {e}")
                continue
            with self._lock:
                self.scrapes += 1
                for name, labels, value in parse(text, self.prefix):
                    key = (name, *(labels.get(k, "") for k in self.keys))
                    vals = self.seen.setdefault(key, [])
                    if not vals or vals[-1] != value:
                        vals.append(value)

    def run(self) -> None:
        while not self._halt.is_set():
            self.scrape_once()
            self._halt.wait(self.interval_s)

    def series(self, name: str, **labels: str) -> list[float]:
        with self._lock:
            return list(self.seen.get((name, *(labels.get(k, "") for k in self.keys)), []))

    def wait_for(self, pred, timeout_s: float) -> bool:
        """Keep scraping until ``pred(self)`` holds (True) or ``timeout_s`` passes (False)."""
        end = time.monotonic() + timeout_s
        while True:
            if pred(self):
                return True
            if time.monotonic() > end:
                return False
            time.sleep(self.interval_s)
            if not self.is_alive():
                self.scrape_once()

    def __enter__(self) -> "Scraper":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._halt.set()
        self.join(timeout=10)
