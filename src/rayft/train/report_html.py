"""report.html: one self-contained page per run, beside report.json (whose contract it does not
change), readable in any browser without Python: the summary, data accounting, loss and
validation curves (inline SVG from metrics.jsonl), memory per worker, guard events, the sample
answer and the resolved config (secrets masked). Written atomically."""
from __future__ import annotations

import html
import json
from pathlib import Path

from ..storage import atomic_write_text, read_jsonl

_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left}
pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:12px}.bad{color:#b00}"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(x, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt) if isinstance(x, (int, float)) else _e(x)


def _table(rows: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def loss_svg(metrics: list[dict], w: int = 640, h: int = 260) -> str:
    """Train loss (blue) and validation loss (orange dots) against step, as inline SVG."""
    tr = [(m["step"], m["loss"]) for m in metrics if isinstance(m.get("loss"), (int, float))]
    va = [(m["step"], m["val_loss"]) for m in metrics if isinstance(m.get("val_loss"), (int, float))]
    pts = tr + va
    if not pts:
        return "<p>no metrics</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = 40

    def xy(s, v):
        x = pad + (s - x0) / ((x1 - x0) or 1) * (w - 2 * pad)
        y = h - pad - (v - y0) / ((y1 - y0) or 1) * (h - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(s, v) for s, v in tr)
    dots = "".join(f'<circle cx="{xy(s, v).split(",")[0]}" cy="{xy(s, v).split(",")[1]}" r="3" fill="#e67e22">'
                   f"<title>step {s}: val {v:.4f}</title></circle>" for s, v in va)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
            f'aria-label="loss curve"><rect width="{w}" height="{h}" fill="#fff" stroke="#ddd"/>'
            f'<polyline fill="none" stroke="#2e86de" stroke-width="2" points="{line}"/>{dots}'
            f'<text x="{pad}" y="{h - 12}" font-size="11">step {x0}</text>'
            f'<text x="{w - pad}" y="{h - 12}" font-size="11" text-anchor="end">step {x1}</text>'
            f'<text x="4" y="{pad}" font-size="11">{y1:.3f}</text>'
            f'<text x="4" y="{h - pad}" font-size="11">{y0:.3f}</text>'
            f'<text x="{w - pad}" y="16" font-size="11" text-anchor="end" fill="#2e86de">train loss</text>'
            f'<text x="{w - pad}" y="30" font-size="11" text-anchor="end" fill="#e67e22">val loss</text></svg>')


def write_report_html(run_dir: str | Path) -> Path:
    """Write ``<run dir>/report.html`` from report.json, metrics.jsonl and memory.json."""
    import yaml

    from ..config import mask_secrets
    from .config import TrainConfig

    run_dir = Path(run_dir)
    rep = json.loads((run_dir / "report.json").read_text())
    rows = read_jsonl(run_dir / "metrics.jsonl")
    metrics = [r for r in rows if "event" not in r]
    mem = {}
    if (run_dir / "memory.json").is_file():
        mem = json.loads((run_dir / "memory.json").read_text())
    failed = rep.get("failed") or rep.get("finished") is False
    head = _table([
        ("run", _e(rep.get("run_dir"))),
        ("status", ("<span class=bad>" + _e(rep.get("error") or "not finished") + "</span>") if failed else "finished"),
        ("steps", f"{_e(rep.get('steps'))} / {_e(rep.get('max_steps'))}"),
        ("loss", f"{_num(rep.get('loss_first'))} &rarr; {_num(rep.get('loss_last'))}"),
        ("val loss", f"{_num(rep.get('val_loss_start'))} &rarr; {_num(rep.get('val_loss'))}"),
        ("tokens/s", _num(rep.get("tokens_per_s"), ".0f")),
        ("wall", f"{_num(rep.get('wall_s'), '.0f')} s"),
        ("command", f"<code>{_e(rep.get('command'))}</code>")])
    data = _table([(k, _e(rep.get(k))) for k in ("rows_read", "rows_rejected", "rows_kept", "rows_other_language",
                                                 "train_rows", "val_rows", "train_rows_unused_for_equal_shards")
                   if k in rep])
    sources = "".join(f"<li>{_e(s.get('name') or s.get('path'))}: {_e(json.dumps(s, default=str))}</li>"
                      for s in rep.get("sources") or [])
    peaks = rep.get("peak_rss_mb") or []
    memory = _table([(f"worker {i}", f"{p:.0f} MB peak RSS") for i, p in enumerate(peaks)]
                    + [("budget", f"{_e((rep.get('memory') or {}).get('budget_gb') or mem.get('budget_gb') or 0)} GB")])
    guard = rep.get("guard") or {}
    events = "".join(f"<li>step {_e(e.get('step'))}: {_e(e.get('event'))} &mdash; {_e(e.get('message'))}</li>"
                     for e in guard.get("events") or []) or "<li>none</li>"
    sample = rep.get("sample") or {}
    cfg = yaml.safe_dump(mask_secrets(rep.get("config") or {}, TrainConfig), sort_keys=False, allow_unicode=True)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>rayft run {_e(run_dir.name)}</title>"
            f"<style>{_CSS}</style></head><body><h1>rayft run {_e(run_dir.name)}</h1>{head}"
            f"<h2>Loss</h2>{loss_svg(metrics)}"
            f"<h2>Data</h2>{data}" + (f"<ul>{sources}</ul>" if sources else "") +
            f"<h2>Memory per worker</h2>{memory}"
            f"<h2>Guard</h2><p>{_e(guard.get('rollbacks', 0))} rollback(s), lr scale "
            f"{_e(guard.get('lr_scale', 1.0))}</p><ul>{events}</ul>"
            + (f"<h2>Sample answer</h2><p><b>{_e(sample.get('prompt'))}</b></p><pre>{_e(sample.get('answer'))}</pre>"
               if sample else "") +
            f"<h2>Config</h2><pre>{_e(cfg)}</pre></body></html>\n")
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
