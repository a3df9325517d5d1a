"""What the daemon shows: ``status.json``, a static auto-refreshing ``dashboard.html`` (per line:
champion, golden-score history as an inline SVG chart, the last cycle's steps and timings, the
queue of new data, paused state; recent alerts) and ``versions.csv`` (top level with a
``line`` column, and one per line under ``lines/<line>/``). All written atomically.
"""
from __future__ import annotations

import csv
import datetime as dt
import html
import io
import os
import socket
import time
from pathlib import Path

from ..storage import atomic_write_json, atomic_write_text, read_jsonl

VERSION_COLUMNS = ["line", "version", "time", "data_hash", "model_hash", "command", "decision", "score",
                   "parent", "champion"]


def _iso(t) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def build_status(w) -> dict:
    """Status of every line from the daemon's state, registry and curate ledger."""
    lines = {}
    names = sorted(set(w.lines()) | set(w.state.data["lines"]))
    for ln in names:
        ls = w.state.line(ln)
        try:
            a = w.registry(ln).aliases()
        except Exception:  # noqa: BLE001 - a registry problem shows up as "unknown"
            a = {}
        pending = w.pending_runs(ln) if ls["cycle"] is None else []
        cyc = ls.get("cycle") or ls.get("last_cycle")
        lines[ln] = {
            "champion": a.get("champion"), "previous": a.get("previous"),
            "paused": ls["paused"], "pause_reason": ls["pause_reason"], "waiting": ls.get("waiting", ""),
            "queue": {"curate_runs": pending, "new_rows": w.rows_of(ln, pending) if pending else 0},
            "in_progress": ls.get("cycle") is not None,
            "cycle": _cycle_view(cyc), "cycles_done": ls["cycles_done"], "last_gain": ls["last_gain"],
            "history": [{k: h.get(k) for k in ("cycle", "finished", "decision", "version", "gain", "golden",
                                               "new_rows", "stages")} for h in ls["history"][-50:]],
        }
    alerts = read_jsonl(w.dir / "alerts.jsonl")[-20:]
    return {"watch_dir": str(w.dir), "pid": os.getpid(), "host": socket.gethostname(), "activity": w.activity,
            "updated": time.time(), "updated_local": _iso(time.time()), "input": w.cfg.watch.input,
            "window": w.cfg.watch.window, "unstable_files": w.unstable, "resources_blocked": w.res_blocked,
            "lines": lines, "recent_alerts": [{k: e.get(k) for k in ("time", "event", "line", "text")}
                                              for e in alerts],
            "registry": str(w.dir / "registry")}


def _cycle_view(cyc: dict | None) -> dict | None:
    if not cyc:
        return None
    return {"id": cyc["id"], "stages": cyc["stages"], "reason": cyc.get("reason"), "new_rows": cyc.get("new_rows"),
            "from_version": cyc.get("from_version"), "decision": cyc.get("decision"),
            "version": cyc.get("version"), "mix": cyc.get("mix"), "started": cyc.get("started"),
            "finished": cyc.get("finished"),
            "steps": [{k: s.get(k) for k in ("name", "status", "attempt", "wall_s", "error")} for s in cyc["steps"]],
            "reasons": (cyc.get("eval") or {}).get("reasons")}


def version_rows(w, line: str) -> list[dict]:
    try:
        reg = w.registry(line)
        vs, champ = reg.versions(), reg.aliases().get("champion")
    except Exception:  # noqa: BLE001
        return []
    rows = []
    for m in vs:
        cmd = m.get("command") or {}
        s = m.get("score") or {}
        rows.append({"line": line, "version": m["version"], "time": _iso(m.get("created")),
                     "data_hash": (m.get("data") or {}).get("hash") or "", "model_hash": m.get("artifact_digest", ""),
                     "command": cmd.get("train") or "", "decision": (m.get("eval") or {}).get("decision") or "",
                     "score": f"{s.get('metric')}={s.get('value'):.6g}" if s.get("value") is not None else "",
                     "parent": m.get("parent") or "", "champion": "yes" if m["version"] == champ else ""})
    return rows


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=VERSION_COLUMNS)
    wr.writeheader()
    wr.writerows(rows)
    return buf.getvalue()


def _secs(x) -> str:
    return "" if x is None else f"{x:.1f} s"


def svg_chart(points: list[tuple[str, float, bool]], width: int = 360, height: int = 110) -> str:
    """Inline SVG line chart of (label, value, promoted) points; promoted points are filled."""
    if not points:
        return "<p class=dim>no scores yet</p>"
    vals = [v for _, v, _ in points]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or abs(hi) or 1.0
    n = len(points)

    def xy(i, v):
        x = 30 + (width - 40) * (i / max(1, n - 1))
        y = 10 + (height - 30) * (1 - (v - lo) / span)
        return x, y

    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in
                    enumerate(xy(i, v) for i, (_, v, _) in enumerate(points)))
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" class="{"pro" if p else "rej"}">'
                   f'<title>{html.escape(lbl)}: {v:.5g}</title></circle>'
                   for (lbl, v, p), (x, y) in zip(points, (xy(i, v) for i, (_, v, _) in enumerate(points))))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="golden score history">'
            f'<text x="2" y="14" class=ax>{hi:.4g}</text><text x="2" y="{height - 18}" class=ax>{lo:.4g}</text>'
            f'<path d="{path}" class=ln /> {dots}</svg>')


def dashboard_html(status: dict, refresh_s: int = 10) -> str:
    e = html.escape
    cards = []
    for ln, s in status["lines"].items():
        pts = []
        for h in s["history"]:
            g = h.get("golden") or {}
            metric = "similarity" if g.get("similarity") is not None else "loss"
            if g.get(metric) is not None:
                pts.append((f"{h['cycle']} {h.get('decision')}", float(g[metric]), bool(h.get("version"))))
        cyc = s.get("cycle")
        steps = ""
        if cyc:
            steps = "".join(f"<tr><td>{e(x['name'])}</td><td>{e(str(x['status']))}</td><td>{x.get('attempt') or 0}</td>"
                            f"<td>{_secs(x.get('wall_s'))}</td>"
                            f"<td>{e(x.get('error') or '')}</td></tr>" for x in cyc["steps"])
            steps = (f"<p>{'current' if s['in_progress'] else 'last'} cycle <b>{e(cyc['id'])}</b> "
                     f"({e(' + '.join(cyc['stages']))}, {cyc.get('new_rows') or 0} new rows"
                     + (f", from {e(cyc['from_version'])}" if cyc.get("from_version") else "") + ")"
                     + (f" &rarr; <b>{e(str(cyc.get('decision')))}</b>" if cyc.get("decision") else "") + "</p>"
                     f"<table><tr><th>step</th><th>status</th><th>attempts</th><th>time</th><th>error</th></tr>"
                     f"{steps}</table>"
                     + ("<ul>" + "".join(f"<li>{e(r)}</li>" for r in cyc.get("reasons") or []) + "</ul>"))
        state = ("<b class=bad>paused</b>: " + e(s["pause_reason"])) if s["paused"] else (
            e(s["waiting"]) if s["waiting"] else ("training" if s["in_progress"] else "idle"))
        cards.append(f"""<section><h2>{e(ln)}</h2>
<p>champion <b>{e(s['champion'] or 'none yet')}</b> (previous {e(s['previous'] or '-')}) &middot; {state}</p>
<p>queue: {len(s['queue']['curate_runs'])} curate run(s), {s['queue']['new_rows']} new train rows</p>
<h3>golden score per cycle (filled = promoted)</h3>{svg_chart(pts)}
{steps}</section>""")
    alerts = "".join(f"<tr><td>{e(a.get('time') or '')}</td><td>{e(a.get('event') or '')}</td>"
                     f"<td>{e(a.get('line') or '')}</td><td>{e(a.get('text') or '')}</td></tr>"
                     for a in reversed(status["recent_alerts"]))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh_s}"><title>rayft watch - {e(status['watch_dir'])}</title>
<style>body{{font:14px sans-serif;margin:1.5em;color:#222}} section{{border:1px solid #ccc;border-radius:6px;
padding:.5em 1em;margin:1em 0}} table{{border-collapse:collapse}} td,th{{border-bottom:1px solid #eee;padding:2px 8px;
text-align:left;vertical-align:top}} .bad{{color:#b00}} .dim{{color:#888}} .ln{{fill:none;stroke:#36c;stroke-width:2}}
circle.pro{{fill:#2a2}} circle.rej{{fill:#fff;stroke:#c33;stroke-width:2}} .ax{{font-size:10px;fill:#666}}</style>
</head><body><h1>rayft watch</h1>
<p class=dim>{e(status['watch_dir'])} &middot; {e(status['activity'])} &middot; updated {e(status['updated_local'])}
&middot; window {e(status['window'] or 'always')} &middot; pid {status['pid']}</p>
{''.join(cards) or '<p>no lines yet: waiting for data</p>'}
<h2>recent alerts</h2><table><tr><th>time</th><th>event</th><th>line</th><th>text</th></tr>{alerts}</table>
</body></html>
"""


def write_all(w, watch_dir: Path) -> dict:
    status = build_status(w)
    atomic_write_json(watch_dir / "status.json", status)
    atomic_write_text(watch_dir / "dashboard.html", dashboard_html(status))
    every = []
    for ln in status["lines"]:
        rows = version_rows(w, ln)
        every += rows
        atomic_write_text(watch_dir / "lines" / ln / "versions.csv", _csv(rows))
    atomic_write_text(watch_dir / "versions.csv", _csv(every))
    return status
