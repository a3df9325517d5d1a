"""Training progress as Ray custom metrics (``ray.util.metrics``), for the Ray dashboard's
metrics view and any Prometheus that scrapes the nodes (issue 21 item 4).

Every Ray Train worker records, at each logged step (``train.log_every``, the first and the
last), tagged ``run`` (``run.name``) and ``rank``:

    rayft_train_step            optimizer steps done (== max_steps at the end of a finished run)
    rayft_train_max_steps       the run's train.max_steps
    rayft_train_loss            training loss of the step (mean over all workers: same on every rank)
    rayft_train_val_loss        validation loss, when the step validated
    rayft_train_tokens_per_s    tokens/s computed by THIS worker since its previous record
    rayft_train_rss_bytes       this worker's resident set size now
    rayft_train_peak_rss_bytes  this worker's peak resident set size
    rayft_train_steps           Counter of the steps above (``rate()`` of it: steps/s; steps
                                re-run after a guard rollback are not counted twice)

Ray's metrics agent on each node (started by every raylet with ``ray[default]``, also under
``include_dashboard=False``) serves them in Prometheus format on the node's metrics export
port, prefixed ``ray_`` (``ray_rayft_train_step{run=...,rank="0"}``). Recording is a local
call into the core worker (the core worker pushes to the agent every
``metrics_report_interval_ms``, 10 s by default); nothing is sent when nobody scrapes beyond
that push. A Ray without metrics support (no agent, ``ray`` minimal install) makes this a no-op:
training never fails because of its metrics.
"""
from __future__ import annotations

import time

TAG_KEYS = ("run", "rank")

#: name -> description of every gauge (README lists them).
GAUGES = {
    "rayft_train_step": "rayft: optimizer steps done",
    "rayft_train_max_steps": "rayft: train.max_steps of the run",
    "rayft_train_loss": "rayft: training loss (mean over workers)",
    "rayft_train_val_loss": "rayft: validation loss",
    "rayft_train_tokens_per_s": "rayft: tokens per second computed by this worker",
    "rayft_train_rss_bytes": "rayft: this worker's resident set size",
    "rayft_train_peak_rss_bytes": "rayft: this worker's peak resident set size",
}
COUNTER = "rayft_train_steps"


class TrainMetrics:
    """One training worker's Ray metrics. ``add_tokens`` after every optimizer step (this
    worker's own tokens), ``record`` with the metrics row of every logged step."""

    def __init__(self, run: str, rank: int):
        self.tags = {"run": str(run), "rank": str(rank)}
        self.tokens, self.t0, self.last_step = 0.0, time.perf_counter(), 0
        self.gauges, self.counter = {}, None
        try:
            from ray.util.metrics import Counter, Gauge

            self.gauges = {n: Gauge(n, d, tag_keys=TAG_KEYS).set_default_tags(self.tags)
                           for n, d in GAUGES.items()}
            self.counter = Counter(COUNTER, "rayft: optimizer steps taken by this worker",
                                   tag_keys=TAG_KEYS).set_default_tags(self.tags)
        except Exception:  # metrics unsupported here: training goes on without them
            self.gauges, self.counter = {}, None
        try:
            import psutil
            self.proc = psutil.Process()
        except Exception:
            self.proc = None

    def add_tokens(self, n: float) -> None:
        self.tokens += float(n)

    def record(self, m: dict, peak_rss_bytes: float) -> None:
        """Set the gauges from the metrics row ``m`` of this step (loop.Worker.metrics)."""
        if not self.gauges:
            return
        now = time.perf_counter()
        dt, step = now - self.t0, int(m["step"])
        vals = {"rayft_train_step": step, "rayft_train_max_steps": m.get("max_steps"),
                "rayft_train_loss": m.get("loss"), "rayft_train_val_loss": m.get("val_loss"),
                "rayft_train_tokens_per_s": self.tokens / dt if dt > 0 else None,
                "rayft_train_peak_rss_bytes": peak_rss_bytes}
        if self.proc is not None:
            vals["rayft_train_rss_bytes"] = self.proc.memory_info().rss
        for name, v in vals.items():
            if v is not None:
                self.gauges[name].set(float(v))
        if step > self.last_step and self.counter is not None:
            self.counter.inc(step - self.last_step)
            self.last_step = step
        self.tokens, self.t0 = 0.0, now
