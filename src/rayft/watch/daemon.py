"""The `rayft watch` loop: new files -> curate -> staged training -> gate -> register -> promote.

Every stage is the existing stage function called in this process, on the one Ray the
daemon starts (or joins: ``ray job submit`` sets RAY_ADDRESS): ``curate.run.run_curate``,
``train.launch.run_training`` (one normal run directory per stage, kept),
``evaluate.run.run_eval`` (the gate against the line's champion), ``registry.Registry``
(register, promote, keep best N). ``rayft serve registry=<watch dir>/registry`` follows the
champion alias, so a promotion is a hot swap.

One poll of the loop:

1. apply control.json commands (pause / resume / stop);
2. scan ``watch.input``; files whose size and mtime did not change since the previous scan
   are stable; their SHA-256 is looked up in the curate ledger (a renamed copy is not new, a
   changed file is); new stable files are snapshotted into ``inbox/`` and curated in one
   incremental run (dedup against everything accepted before, rows routed by language);
3. for each line (language) with curate runs it has not trained on, or a cycle in progress:
   run the cycle's steps in order - training stages (warmup/full from the base, or
   incremental from the champion's adapter on new + replayed rows), eval, register,
   promote - each retried ``watch.max_retries`` times with backoff (a retried training stage
   resumes from its checkpoint: same run directory), then the line is paused with an alert.
   Training waits outside ``watch.window`` and while memory/disk are over the thresholds;
4. write status.json, dashboard.html, versions.csv.

See ``rayft.watch.state`` for why a kill -9 at any point neither loses nor duplicates work.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from .. import _env
from ..config import load
from ..data.formats import DataError, resolve_paths
from . import policy as P
from . import report as R
from .alerts import Alerter
from .config import WatchConfig
from .state import State, daemon_lock, pending_commands

PAIR_SUFFIXES = (".jsonl", ".json", ".parquet")


def _now_local() -> dt.datetime:
    return dt.datetime.now()


def _short(e: BaseException, n: int = 400) -> str:
    s = f"{type(e).__name__}: {e}".strip()
    return s if len(s) <= n else s[: n - 3] + "..."


class StopRequested(Exception):
    pass


class Watcher:
    def __init__(self, cfg: WatchConfig, watch_dir: Path, alerter: Alerter | None = None):
        self.cfg, self.dir = cfg, watch_dir
        self.state = State(watch_dir)
        self.alerts = alerter or Alerter(cfg.alerts, watch_dir)
        self.curated = watch_dir / "curated"
        self.registry_uri = str(watch_dir / "registry")
        self.prev_scan: dict[str, tuple] = {}
        self.known: dict[tuple, str] = {}      # (path, size, mtime_ns) -> sha256
        self.bad: set[tuple] = set()           # (path, size, mtime_ns) whose curation kept failing
        self.curate_failures = 0
        self.unstable: list[str] = []
        self.stop = False
        self.res_blocked: list[str] = []
        self.window_open: bool | None = None
        self.activity = "starting"
        for ls in self.state.data["lines"].values():  # killed mid-step: that attempt continues, not a new one
            for st in (ls.get("cycle") or {}).get("steps", []):
                if st["status"] == "running":
                    st["status"], st["attempt"] = "pending", max(0, st["attempt"] - 1)
                    st["interrupted"] = st.get("interrupted", 0) + 1

    # ------------------------------------------------------------------ helpers
    def log(self, msg: str) -> None:
        print(f"[rayft watch] {msg}", file=sys.stderr, flush=True)

    def alert(self, event: str, text: str, line: str = "", **data) -> None:
        self.alerts.alert(event, text, line=line, **data)

    def save(self) -> None:
        self.state.save()

    def registry(self, line: str):
        from ..registry import Registry
        return Registry(self.registry_uri, line)

    def ledger(self):
        from ..curate.ledger import Ledger
        return Ledger(self.curated)

    def line_dir(self, line: str) -> Path:
        return self.dir / "lines" / line

    # ------------------------------------------------------------------ control
    def apply_control(self) -> None:
        for c in pending_commands(self.state):
            cmd, line = c.get("cmd"), c.get("line") or ""
            lines = [line] if line else sorted(set(self.lines()) | set(self.state.data["lines"]))
            if cmd == "stop":
                self.stop = True
                self.log("stop requested: exiting after the current step")
            for ln in lines if cmd in ("pause", "resume") else []:
                ls = self.state.line(ln)
                if cmd == "pause" and not ls["paused"]:
                    ls["paused"], ls["pause_reason"] = True, "paused by `rayft watch pause`"
                    self.alert("paused", f"{ln}: paused by the operator", line=ln)
                elif cmd == "resume" and ls["paused"]:
                    ls["paused"], ls["pause_reason"] = False, ""
                    for st in (ls.get("cycle") or {}).get("steps", []):
                        if st["status"] == "failed":
                            st["status"], st["attempt"] = "pending", 0
                    self.alert("resumed", f"{ln}: resumed by the operator", line=ln)
            self.state.data["control_done"] = (self.state.data.get("control_done", []) + [c["id"]])[-500:]
            self.save()

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake up for a stop command."""
        end = time.time() + seconds
        while time.time() < end:
            self.apply_control()
            if self.stop:
                raise StopRequested()
            time.sleep(min(1.0, max(0.0, end - time.time())))

    # ------------------------------------------------------------------ detection + curation
    def input_files(self) -> list[str]:
        out = []
        for spec in self.cfg.watch.input:
            try:
                files = resolve_paths(spec)
            except DataError:
                files = []  # an empty or not yet created input directory
            out += [f for f in files if f.endswith(PAIR_SUFFIXES)
                    and not Path(f).resolve().is_relative_to(self.dir)]
        return sorted(set(out))

    def scan(self) -> list[tuple[str, str]]:
        """(path, sha256) of stable files the ledger does not hold yet; updates self.unstable."""
        cur = {}
        for f in self.input_files():
            try:
                st = os.stat(f)
            except OSError:
                continue
            cur[f] = (st.st_size, st.st_mtime_ns)
        stable = set(P.stable_files(self.prev_scan, cur))
        self.prev_scan = cur
        led = self.ledger()
        new, seen, unstable = [], set(), []
        for f, (size, mtime) in sorted(cur.items()):
            key = (f, size, mtime)
            if key in self.bad or (key in self.known and led.has_file(self.known[key])):
                continue  # already ingested (or given up on), unchanged since
            if f not in stable:
                unstable.append(f)
                continue
            from ..data.reader import file_digest
            try:
                dg = self.known[key] = file_digest(f)
            except OSError:
                continue
            if led.has_file(dg) or dg in seen:
                continue  # a renamed / duplicate copy of data already ingested
            seen.add(dg)
            new.append((f, dg))
        self.unstable = unstable
        return new

    def ingest(self, files: list[tuple[str, str]]) -> str | None:
        """Snapshot the files into inbox/ and curate them; returns the curate run id."""
        from ..curate.config import CurateConfig
        from ..curate.run import run_curate
        from ..data.reader import file_digest

        led = self.ledger()
        before = {r["run"] for r in led.runs}
        inbox = self.dir / "inbox" / f"{int(time.time())}-{led.next_run_id()}"
        inbox.mkdir(parents=True, exist_ok=True)
        taken = []
        for i, (f, dg) in enumerate(files):
            dst = inbox / f"{i:04d}-{Path(f).name}"
            shutil.copy2(f, dst)
            if file_digest(str(dst)) != dg:  # changed while copying: next scan sees it again
                dst.unlink()
                self.prev_scan.pop(f, None)
                continue
            taken.append((f, dst))
        if not taken:
            shutil.rmtree(inbox, ignore_errors=True)
            return None
        c = self.cfg.curate
        over = [*c.overrides, f"data.path={inbox}", f"output.dir={self.curated}"]
        if self.cfg.watch.lines:
            over.append(f"language.keep=[{','.join(self.cfg.watch.lines)}]")
        ccfg = load(CurateConfig, c.config or None, over)
        self.activity = f"curating {len(taken)} new file(s)"
        self.write_status()
        t0 = time.time()
        msg = run_curate(ccfg)
        shutil.rmtree(inbox, ignore_errors=True)
        led = self.ledger()
        runs = [r["run"] for r in led.runs if r["run"] not in before]
        if not runs:
            self.log(f"curate committed nothing: {msg}")
            return None
        run = runs[-1]
        rep = json.loads((self.curated / "reports" / f"{run}.json").read_text(encoding="utf-8"))
        per_line = {ln: self.rows_of(ln, [run]) for ln in self.lines()}
        self.alert("new_data", f"{len(taken)} new file(s): {rep.get('rows_kept')} of {rep.get('rows_in')} rows "
                   f"kept, {rep.get('rows_rejected')} rejected (curate {run}, {time.time() - t0:.0f} s); new "
                   f"train rows per line: " + ", ".join(f"{k}={v}" for k, v in per_line.items()),
                   files=[f for f, _ in taken], curate_run=run, rows_in=rep.get("rows_in"),
                   rows_kept=rep.get("rows_kept"), rows_rejected=rep.get("rows_rejected"), per_line=per_line,
                   curate_s=round(time.time() - t0, 2))
        return run

    # ------------------------------------------------------------------ lines and data
    def lines(self) -> list[str]:
        if self.cfg.watch.lines:
            return list(self.cfg.watch.lines)
        if not self.curated.is_dir():
            return []
        return sorted(p.name for p in self.curated.iterdir() if (p / "train").is_dir() or (p / "golden").is_dir())

    def part_files(self, line: str, split: str, runs: list[str] | None = None) -> list[Path]:
        d = self.curated / line / split
        files = sorted(d.glob("part-*.parquet")) if d.is_dir() else []
        if runs is None:
            return files
        return [f for f in files if any(f.name.startswith(f"part-{r}-") for r in runs)]

    def rows_of(self, line: str, runs: list[str] | None, split: str = "train") -> int:
        import pyarrow.parquet as pq
        return sum(pq.read_metadata(f).num_rows for f in self.part_files(line, split, runs))

    def pending_runs(self, line: str) -> list[str]:
        done = set(self.state.line(line)["consumed"])
        return [r["run"] for r in self.ledger().runs if r["run"] not in done]

    def write_mix(self, line: str, cyc: dict) -> Path:
        """New rows + a deterministic replay sample of earlier rows -> cycles/<id>/mix/."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..data.records import PAIR_COLUMNS, PAIRS_SCHEMA, content_hash
        from ..storage import atomic_write_bytes, atomic_write_json

        out = self.line_dir(line) / "cycles" / cyc["id"] / "mix"
        target, info = out / "part-0.parquet", out.parent / "mix.json"
        if target.exists() and info.exists():  # a retry or restart: same rows, so a resumed run sees the same data
            cyc["mix"] = json.loads(info.read_text(encoding="utf-8"))
            return out

        def read(files):
            if not files:
                return pa.Table.from_pylist([], schema=PAIRS_SCHEMA)
            return pa.concat_tables([pq.read_table(f).select(PAIR_COLUMNS).cast(PAIRS_SCHEMA) for f in files])

        new_files = self.part_files(line, "train", cyc["curate_runs"])
        new = read(new_files)
        old = read([f for f in self.part_files(line, "train") if f not in new_files])
        ids = [content_hash(*(x or "" for x in t)) for t in zip(
            *(old[c].to_pylist() for c in ("system", "history", "prompt", "response")))]
        pick = P.replay_sample(ids, new.num_rows, self.cfg.watch.replay_ratio, self.cfg.watch.replay_salt)
        mix = pa.concat_tables([new, old.take(pick)]) if pick else new
        import io
        buf = io.BytesIO()
        pq.write_table(mix, buf)
        atomic_write_bytes(target, buf.getvalue())
        cyc["mix"] = {"new_rows": new.num_rows, "replay_rows": len(pick), "old_rows": old.num_rows,
                      "ratio": self.cfg.watch.replay_ratio, "path": str(out)}
        atomic_write_json(info, cyc["mix"])
        return out

    # ------------------------------------------------------------------ cycles
    def new_cycle(self, line: str, runs: list[str], reason: str) -> dict:
        ls = self.state.line(line)
        champion = self.registry(line).aliases().get("champion")
        # a scheduled retrain has no new rows to add incrementally: it retrains on every row
        kinds = P.plan_stages(bool(champion) and reason != "schedule", ls["cycles_since_full"],
                              self.cfg.watch.full_every, self.cfg.watch.warmup_epochs > 0)
        cid = self.state.next_cycle_id()
        steps = [{"name": k, "status": "pending", "attempt": 0} for k in kinds]
        steps += [{"name": k, "status": "pending", "attempt": 0} for k in ("eval", "register", "promote")]
        cyc = {"id": cid, "line": line, "reason": reason, "curate_runs": runs, "stages": kinds,
               "new_rows": self.rows_of(line, runs), "from_version": champion if "incremental" in kinds else None,
               "steps": steps, "started": time.time(), "finished": None, "candidate": None, "eval": None,
               "version": None, "decision": None}
        ls["cycle"] = cyc
        self.save()
        self.log(f"{line}: cycle {cid} ({' + '.join(kinds)}) on curate runs {', '.join(runs) or '-'} "
                 f"({cyc['new_rows']} new train rows)")
        return cyc

    def blocked(self, line: str) -> str:
        """Why training cannot start now ('' = it can): window, resources."""
        w = self.cfg.watch.window
        if not P.in_window(w, _now_local()):
            nxt = P.next_window_start(w, _now_local())
            if self.window_open is not False:
                self.alert("window", f"outside the training window {w}; training waits until "
                           f"{nxt:%Y-%m-%d %H:%M} local time", line=line)
            self.window_open = False
            return f"waiting for the training window {w}"
        self.window_open = True
        r = self.cfg.resources
        mem, disk = P.resource_usage(str(self.dir))
        probs = P.resource_problems(mem, disk, r.max_memory_percent, r.min_disk_free_gb)
        if probs and not self.res_blocked:
            self.alert("resources", "training paused: " + "; ".join(probs), line=line, memory_percent=mem,
                       disk_free_gb=round(disk, 2))
        elif not probs and self.res_blocked:
            self.alert("resources_ok", f"resources back under the thresholds (memory {mem:.0f}%, disk free "
                       f"{disk:.1f} GB); training resumes", line=line)
        self.res_blocked = probs
        return ("resources: " + "; ".join(probs)) if probs else ""

    def step_line(self, line: str) -> bool:
        """Advance one line as far as possible; True when something ran."""
        ls = self.state.line(line)
        if ls["paused"]:
            return False
        if ls["cycle"] is None:
            runs = self.pending_runs(line)
            if runs and self.rows_of(line, runs) == 0:
                ls["consumed"] += runs  # only val/golden rows or other languages: nothing to train on
                self.save()
                runs = []
            reason = "new data"
            if not runs:
                every = self.cfg.watch.schedule_every_s
                last = ls["last_train_end"] or 0
                if not every or time.time() - last < every or self.state.line(line)["history"] == []:
                    return False
                if P.should_skip(ls["last_gain"], 0, self.cfg.watch.min_gain):
                    ls["last_train_end"] = time.time()
                    self.save()
                    self.alert("skipped", f"{line}: scheduled retrain skipped: no new data and the last accepted "
                               f"gain was {ls['last_gain']:+.2%} (< {self.cfg.watch.min_gain:.1%})", line=line)
                    return False
                reason = "schedule"
            why = self.blocked(line)
            ls["waiting"] = why
            if why:
                self.save()
                return False
            self.new_cycle(line, runs, reason)
        return self.run_cycle(line)

    def run_cycle(self, line: str) -> bool:
        ls = self.state.line(line)
        cyc = ls["cycle"]
        ran = False
        for st in cyc["steps"]:
            if st["status"] in ("done", "skipped"):
                continue
            if st["status"] == "failed":
                return ran  # paused; `resume` resets it
            if st["name"] in ("warmup", "full", "incremental"):
                why = self.blocked(line)
                ls["waiting"] = why
                if why:
                    self.save()
                    return ran
            ran = True
            while st["status"] != "done":
                st["attempt"] += 1
                wait = P.backoff(st["attempt"], self.cfg.watch.backoff_s, self.cfg.watch.backoff_max_s)
                if wait:
                    self.log(f"{line}: {cyc['id']} {st['name']}: attempt {st['attempt']} in {wait:.0f} s")
                    self.save()
                    self.sleep(wait)
                st["status"], st["started"], st["error"] = "running", time.time(), None
                self.activity = f"{line}: {cyc['id']} {st['name']} (attempt {st['attempt']})"
                self.save()
                self.write_status()
                try:
                    do = {"eval": self.do_eval, "register": self.do_register, "promote": self.do_promote}
                    st["result"] = do.get(st["name"], self.do_train)(line, cyc, st)
                    st["status"], st["finished"] = "done", time.time()
                    st["wall_s"] = round(st["finished"] - st["started"], 2)
                except StopRequested:
                    raise
                except Exception as e:  # noqa: BLE001 - every stage failure is retried, then paused
                    st["status"], st["error"] = "error", _short(e)
                    st["finished"] = time.time()
                    self.log(f"{line}: {cyc['id']} {st['name']} attempt {st['attempt']}/{self.cfg.watch.max_retries} "
                             f"failed: {st['error']}\n{traceback.format_exc(limit=3)}")
                    self.alert("stage_failed", f"{line}: {cyc['id']} {st['name']} attempt {st['attempt']}/"
                               f"{self.cfg.watch.max_retries} failed: {st['error']}", line=line,
                               cycle=cyc["id"], stage=st["name"], attempt=st["attempt"])
                    if st["attempt"] >= self.cfg.watch.max_retries:
                        st["status"] = "failed"
                        ls["paused"] = True
                        ls["pause_reason"] = f"{cyc['id']} {st['name']} failed {st['attempt']} times: {st['error']}"
                        self.save()
                        self.alert("failed", f"{line}: {cyc['id']} {st['name']} failed after {st['attempt']} attempts; "
                                   f"line paused, nothing promoted (`rayft watch resume {line}` retries). Last error: "
                                   f"{st['error']}", line=line, cycle=cyc["id"], stage=st["name"])
                        self.alert("paused", f"{line}: paused after repeated failures", line=line)
                        return ran
                    self.save()
                    if self.stop:
                        raise StopRequested() from None
                    continue
                self.save()
                if self.stop:
                    raise StopRequested()
            if st["name"] == "eval" and not cyc["eval"]["accept"]:
                for rest in cyc["steps"]:
                    if rest["name"] in ("register", "promote"):
                        rest["status"] = "skipped"
                self.save()
        self.finish_cycle(line)
        return ran

    # ------------------------------------------------------------------ steps
    def stage_overrides(self, line: str, cyc: dict, st: dict) -> tuple[list[str], dict]:
        name = st["name"]
        c = self.cfg
        base = load_train(c.train.recipe, [*c.train.overrides, "data.path=-"])  # the recipe's own settings
        val = self.curated / line / "val"
        over = [*c.train.overrides, f"run.dir={self.line_dir(line) / 'runs'}", f"run.name={cyc['id']}-{name}",
                f"train.keep_checkpoints={c.watch.keep_checkpoints}", "run.overwrite=false",
                f"data.val_path={val if self.part_files(line, 'val') else ''}", "data.language="]
        info: dict = {}
        if name == "warmup":
            rows = self.rows_of(line, None, "golden")
            s = base
            need = s.scaling.num_workers * s.train.batch_size
            if rows < need:
                raise SkipStage(f"{rows} golden rows < workers x batch = {need}")
            steps = P.steps_for_epochs(c.watch.warmup_epochs, rows, s.scaling.num_workers, s.train.batch_size,
                                       s.train.grad_accum)
            over += [f"data.path={self.curated / line / 'golden'}", f"train.max_steps={steps}",
                     f"train.checkpoint_every={max(1, min(steps, s.train.checkpoint_every))}",
                     f"train.warmup_steps={min(s.train.warmup_steps, max(0, steps - 1))}"]
            info = {"rows": rows, "steps": steps}
        elif name == "full":
            over.append(f"data.path={self.curated / line / 'train'}")
            warm = next((x for x in cyc["steps"] if x["name"] == "warmup" and x["status"] == "done"), None)
            if warm:
                over.append(f"model.adapter={warm['result']['run_dir']}/adapter")
                info["from"] = "warmup"
        elif name == "incremental":
            mix = self.write_mix(line, cyc)
            over.append(f"data.path={mix}")
            reg = self.registry(line)
            m, local = reg.fetch(cyc["from_version"])
            if m["kind"] == "lora":
                over.append(f"model.adapter={local / 'adapter'}")
            else:
                over.append(f"model.name={local / 'model'}")
            info = dict(cyc.get("mix") or {}, **{"from": cyc["from_version"]})
        return over, info

    def do_train(self, line: str, cyc: dict, st: dict) -> dict:
        from ..train.launch import run_training

        try:
            over, info = self.stage_overrides(line, cyc, st)
        except SkipStage as e:
            self.log(f"{line}: {cyc['id']} {st['name']} skipped: {e}")
            return {"skipped": str(e), "run_dir": None}
        tcfg = load_train(self.cfg.train.recipe, over)
        self.alert("stage_started", f"{line}: {cyc['id']} {st['name']} started (attempt {st['attempt']}"
                   + (f", from {info['from']}" if info.get("from") else "") + ")", line=line, cycle=cyc["id"],
                   stage=st["name"], **info)
        t0 = time.time()
        run_dir = run_training(tcfg)
        rep = json.loads((Path(run_dir) / "report.json").read_text(encoding="utf-8"))
        res = {"run_dir": run_dir, "steps": rep.get("steps"), "loss_first": rep.get("loss_first"),
               "loss_last": rep.get("loss_last"), "val_loss": rep.get("val_loss"),
               "tokens_per_s": rep.get("tokens_per_s"), "wall_s": round(time.time() - t0, 2),
               "resumed_from_step": rep.get("resumed_from_step"), "train_rows": rep.get("train_rows"), **info}
        cyc["candidate"] = run_dir
        self.alert("stage_finished", f"{line}: {cyc['id']} {st['name']} finished: loss {_f(res['loss_first'])} -> "
                   f"{_f(res['loss_last'])}, val loss {_f(res['val_loss'])}, {res['tokens_per_s'] or 0:.0f} tokens/s, "
                   f"{res['wall_s']:.0f} s" + (f" (resumed from step {res['resumed_from_step']})"
                                               if res["resumed_from_step"] else ""),
                   line=line, cycle=cyc["id"], stage=st["name"], **res)
        g = rep.get("guard") or {}
        for ev in g.get("events") or []:
            self.alert("guard", f"{line}: {cyc['id']} {st['name']}: {ev.get('event')}: "
                       f"{ev.get('message') or ''}".strip(), line=line, cycle=cyc["id"], guard=ev)
        return res

    def do_eval(self, line: str, cyc: dict, st: dict) -> dict:
        from ..evaluate.config import EvalConfig
        from ..evaluate.run import run_eval

        cand = cyc["candidate"]
        if not cand:
            raise RuntimeError("no candidate run (every training stage was skipped)")
        out = self.line_dir(line) / "cycles" / cyc["id"] / "eval.json"
        champion = self.registry(line).aliases().get("champion")
        ev = None
        if out.exists():  # complete (atomic write): reuse when still against the same champion
            ev = json.loads(out.read_text(encoding="utf-8"))
            if ev.get("candidate", {}).get("run") != str(Path(cand).resolve()) or ev.get("champion_version") != champion:
                ev = None
        if ev is None:
            ec = self.cfg.eval
            ecfg = load(EvalConfig, ec.config or None, [
                *ec.overrides, f"candidate={cand}", "champion=", f"output={out}", "data.golden=", "data.val=",
                f"data.curated={self.curated}", f"data.language={line}", f"registry.uri={self.registry_uri}",
                f"registry.name={line}", "registry.register=false", "registry.promote=false"])
            ev = json.loads(Path(run_eval(ecfg)).read_text(encoding="utf-8"))
        gain = P.relative_gain_of(ev)
        cyc["eval"] = {"path": str(out), "accept": ev["accept"], "decision": ev["decision"], "reasons": ev["reasons"],
                       "champion_version": ev.get("champion_version"), "gain": gain,
                       "score": (ev.get("metrics") or {}).get("candidate", {}).get("golden")}
        cyc["decision"] = ev["decision"]
        if ev["accept"]:
            self.alert("accepted", f"{line}: {cyc['id']} candidate accepted vs "
                       f"{ev.get('champion') or 'base'} (golden {_pct(gain)}): " + "; ".join(ev["reasons"]),
                       line=line, cycle=cyc["id"], reasons=ev["reasons"], gain=gain)
        else:
            self.alert("rejected", f"{line}: {cyc['id']} candidate rejected vs {ev.get('champion') or 'base'}: "
                       + "; ".join(ev["reasons"]), line=line, cycle=cyc["id"], reasons=ev["reasons"], gain=gain)
        return cyc["eval"]

    def do_register(self, line: str, cyc: dict, st: dict) -> dict:
        from ..registry.fs import sha256_file
        from ..registry.lineage import collect_artifacts
        import hashlib

        reg = self.registry(line)
        run = Path(cyc["candidate"])
        files = collect_artifacts(run)
        digest = hashlib.sha256("\n".join(f"{rel} {sha256_file(p)}" for rel, p in sorted(files.items()))
                                .encode()).hexdigest()
        found = next((m for m in reg.versions() if m.get("artifact_digest") == digest), None)
        if found is None:  # never the same weights twice, even after a kill between register and save
            ev = json.loads(Path(cyc["eval"]["path"]).read_text(encoding="utf-8"))
            found = reg.register(run, ev)
        cyc["version"] = found["version"]
        return {"version": found["version"], "artifact_digest": digest}

    def do_promote(self, line: str, cyc: dict, st: dict) -> dict:
        reg = self.registry(line)
        a = reg.promote(cyc["version"])  # a no-op when it already is the champion
        gone = reg.cleanup(self.cfg.watch.keep_best)
        return {"champion": a.get("champion"), "previous": a.get("previous"), "deleted": gone}

    def finish_cycle(self, line: str) -> None:
        ls = self.state.line(line)
        cyc = ls["cycle"]
        cyc["finished"] = time.time()
        accepted = bool(cyc.get("eval") and cyc["eval"]["accept"])
        promoted = any(s["name"] == "promote" and s["status"] == "done" for s in cyc["steps"])
        score = (cyc.get("eval") or {}).get("score") or {}
        ls["history"].append({
            "cycle": cyc["id"], "stages": cyc["stages"], "started": cyc["started"], "finished": cyc["finished"],
            "decision": cyc.get("decision"), "version": cyc.get("version") if promoted else None,
            "gain": (cyc.get("eval") or {}).get("gain"), "golden": score, "new_rows": cyc["new_rows"],
            "reasons": (cyc.get("eval") or {}).get("reasons"),
            "steps": [{k: s.get(k) for k in ("name", "status", "attempt", "wall_s", "error")} for s in cyc["steps"]]})
        ls["history"] = ls["history"][-200:]
        ls["last_cycle"] = cyc
        ls["consumed"] += [r for r in cyc["curate_runs"] if r not in ls["consumed"]]
        ls["cycles_done"] += 1
        ls["cycles_since_full"] = 0 if "full" in cyc["stages"] else ls["cycles_since_full"] + 1
        if accepted:
            ls["last_gain"] = (cyc.get("eval") or {}).get("gain")
        ls["last_train_end"] = time.time()
        ls["cycle"] = None
        self.save()
        self.prune_checkpoints(line)
        self.log(f"{line}: cycle {cyc['id']} done: {cyc.get('decision')}"
                 + (f", champion {cyc['version']}" if promoted else ""))

    def prune_checkpoints(self, line: str) -> None:
        """Keep the newest watch.keep_checkpoints checkpoints of the line (run dirs and reports stay)."""
        cks = sorted((self.line_dir(line) / "runs").glob("*/checkpoints/step_*"), key=lambda p: p.stat().st_mtime)
        for p in cks[: max(0, len(cks) - self.cfg.watch.keep_checkpoints)]:
            shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ status
    def write_status(self) -> None:
        try:
            R.write_all(self, self.dir)
        except Exception as e:  # noqa: BLE001 - the dashboard never stops the loop
            self.log(f"status/dashboard not written: {_short(e)}")

    # ------------------------------------------------------------------ main loop
    def run(self) -> str:
        c = self.cfg.watch
        shutil.rmtree(self.dir / "inbox", ignore_errors=True)  # snapshots of a killed ingestion
        self.state.data["started"] = time.time()
        self.state.data["pid"] = os.getpid()
        self.save()
        started = _env.ray_start(self.cfg.ray.address, self.cfg.ray.num_cpus or None, log_to_driver=True)
        self.alert("started", f"watching {', '.join(c.input)} -> {self.dir}" + (" (once)" if c.once else ""))
        try:
            while True:
                self.apply_control()
                if self.stop:
                    break
                self.activity = "scanning"
                new = self.scan()
                if new:
                    self.guarded("curate", "", lambda: self.ingest(new), files=[f for f, _ in new])
                ran = False
                for line in self.lines():
                    ran = bool(self.guarded("cycle", line, lambda: self.step_line(line))) or ran
                self.activity = "idle"
                self.write_status()
                if c.once and not new and not ran and not self.unstable and not self.runnable():
                    break
                self.sleep(c.settle_s if (c.once or self.unstable) and c.settle_s < c.poll_s else c.poll_s)
        except StopRequested:
            pass
        finally:
            self.activity = "stopped"
            self.write_status()
            waiting = {ln: ls.get("pause_reason") or ls.get("waiting") for ln, ls in self.state.data["lines"].items()
                       if ls.get("paused") or ls.get("waiting")}
            self.alert("stopped", "daemon stopped" + (f"; waiting lines: {waiting}" if waiting else ""))
            self.alerts.close()
            if started:
                import ray
                ray.shutdown()
        return str(self.dir)

    def guarded(self, what: str, line: str, fn, files: list[str] | None = None):
        """Run ``fn``; a failure is logged and alerted, and never stops the daemon. Files whose
        curation failed watch.max_retries times in a row are left alone until they change."""
        try:
            out = fn()
            if what == "curate":
                self.curate_failures = 0
            return out
        except StopRequested:
            raise
        except Exception as e:  # noqa: BLE001
            self.log(f"{what} failed: {_short(e)}\n{traceback.format_exc(limit=4)}")
            if what == "curate":
                self.curate_failures = getattr(self, "curate_failures", 0) + 1
                n = self.curate_failures
                self.alert("stage_failed", f"curate of {len(files or [])} new file(s) failed (attempt {n}/"
                           f"{self.cfg.watch.max_retries}): {_short(e)}", files=files)
                if n >= self.cfg.watch.max_retries:
                    self.alert("failed", f"curate failed {n} times; leaving these files alone until they change: "
                               + ", ".join(files or []), files=files)
                    for f in files or []:  # skipped by scan() until their size/mtime change
                        for key in [k for k in self.known if k[0] == f]:
                            self.bad.add(key)
                    self.curate_failures = 0
                else:
                    time.sleep(P.backoff(n + 1, self.cfg.watch.backoff_s, self.cfg.watch.backoff_max_s))
            else:
                self.alert("stage_failed", f"{line}: {what} failed: {_short(e)}", line=line)
            return None

    def runnable(self) -> bool:
        """Is there a line with work it could do now (not paused, not waiting)?"""
        for line in self.lines():
            ls = self.state.line(line)
            if ls["paused"] or ls.get("waiting"):
                continue
            if ls["cycle"] is not None or any(self.rows_of(line, [r]) for r in self.pending_runs(line)):
                return True
        return False


class SkipStage(Exception):
    pass


def load_train(recipe: str, overrides: list[str]):
    from ..train.config import TrainConfig
    return load(TrainConfig, recipe or None, overrides)


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:+.2%}"


def run_watch(cfg: WatchConfig) -> str:
    """`rayft watch`: the daemon; returns the watch directory (printed last by the CLI)."""
    d = Path(os.path.expanduser(cfg.watch.dir)).resolve()
    if cfg.watch.detached:
        from .detached import start_detached
        start_detached(cfg, d)
        return str(d)
    with daemon_lock(d):
        return Watcher(cfg, d).run()
