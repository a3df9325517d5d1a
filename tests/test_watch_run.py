"""`rayft watch` end to end on the tiny model and the session Ray (run under the heavy lock).

One watch directory goes through the whole story, test by test (they share it, in order):
file 1 -> a full cycle -> champion promoted, every alert on a real loopback webhook and a
real SMTP server (STARTTLS), a refusing Slack sink only logged; a renamed copy and a
half-written file -> nothing ingested; file 2 -> incremental cycle from the champion's
adapter on new + replayed rows, the daemon (a subprocess joined to the session Ray) killed
with SIGKILL mid-training and restarted -> the same cycle finishes, nothing ingested or
registered twice (`watch.detached=true`: the daemon under a detached Ray actor that restarts
it, itself killed too and restarted by Ray); file 3 with a poisoned recipe -> 3 attempts, one `failed` alert, line
paused, `rayft watch resume` clears it; `rayft serve` answers from the watch registry.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from rayft.cli import main
from rayft.config import load
from rayft.registry import Registry
from rayft.storage import read_jsonl
from rayft.watch.config import ALIASES, WatchConfig
from rayft.watch.daemon import Watcher, run_watch
from test_watch_alerts import HookServer, SmtpServer, closed_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"
TRAIN = "train.overrides=[train.max_steps={steps},train.checkpoint_every=2,scaling.num_workers=1,generate.prompt=," \
        "data.max_seq_len=128,train.lr=0.003]"


def _args(d, inp, hook, *extra, steps=10) -> list[str]:
    return [f"input={inp}", f"dir={d}", f"recipe={REPO / 'configs/tiny.yaml'}", "once=true",
            "watch.settle_s=0.3", "watch.backoff_s=0.2", "watch.warmup_epochs=0", "watch.lines=[en]",
            TRAIN.format(steps=steps),
            f"eval.config={REPO / 'configs/eval.yaml'}",
            "eval.overrides=[gate.golden_metric=loss,score.generate=false,data.max_rows=24,data.max_seq_len=128]",
            f"curate.config={REPO / 'configs/curate.yaml'}",
            "curate.overrides=[split.golden_fraction=0.2,split.val_fraction=0.15]",
            f"alerts.webhook={hook}/hook", "alerts.retry_backoff_s=0.05", "alerts.timeout_s=5",
            "alerts.slack_webhook_env=WATCH_TEST_SLACK", "resources.max_memory_percent=100",
            "resources.min_disk_free_gb=0", *extra]  # a shared test machine: thresholds off


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def world(ray_session, tmp_path_factory):
    """The first cycle: file 1 dropped, `rayft watch once=true` in this process."""
    base = tmp_path_factory.mktemp("watch")
    en = [json.loads(x) for x in SAMPLES.read_text(encoding="utf-8").splitlines()]
    en = [r for r in en if r["metadata"]["language"] == "en"]
    inp, d, spare = base / "in", base / "w", base / "spare"
    inp.mkdir()
    spare.mkdir()
    _write(spare / "file1.jsonl", en[:50])
    _write(spare / "file2.jsonl", en[50:85])
    _write(spare / "file3.jsonl", en[85:])
    (inp / "file1.jsonl").write_bytes((spare / "file1.jsonl").read_bytes())
    hook, smtp = HookServer(), SmtpServer(base)
    env = dict(smtp.env, WATCH_TEST_SLACK=f"http://127.0.0.1:{closed_port()}/services/T0/B0/SLACKSECRET")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    extra = ["alerts.email_to=[ops@example.com]", f"alerts.smtp_port={smtp.port}", "alerts.events=[]"]
    t0 = time.time()
    cfg = load(WatchConfig, REPO / "configs/watch.yaml", _args(d, inp, hook.url, *extra), ALIASES)
    out = run_watch(cfg)
    w = {"base": base, "inp": inp, "dir": d, "spare": spare, "hook": hook, "smtp": smtp, "out": out,
         "first_s": time.time() - t0, "extra": extra}
    yield w
    hook.close()
    smtp.close()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _state(d: Path) -> dict:
    return json.loads((d / "state.json").read_text())


def test_first_file_promotes_a_champion_with_every_alert_delivered(world, capsys):
    d = world["dir"]
    assert world["out"] == str(d.resolve())
    reg = Registry(str(d / "registry"), "en")
    champ = reg.aliases()["champion"]
    assert champ and [m["version"] for m in reg.versions()] == [champ]
    st = _state(d)["lines"]["en"]
    h = st["history"][-1]
    assert h["cycle"] == "c0001" and h["stages"] == ["full"] and h["decision"] == "promote" and h["version"] == champ
    assert [s["status"] for s in h["steps"]] == ["done"] * 4 and st["cycle"] is None and not st["paused"]
    run = d / "lines/en/runs/c0001-full"
    assert (run / "report.json").exists() and (run / "adapter/adapter_model.safetensors").exists()

    alerts = read_jsonl(d / "alerts.jsonl")
    names = [a["event"] for a in alerts]
    assert [n for n in names if n != "guard"] == ["started", "new_data", "stage_started", "stage_finished",
                                                  "accepted", "stopped"], names
    assert "rows kept" in alerts[1]["text"] and "en=" in alerts[1]["text"]
    assert "loss" in alerts[3]["text"] and "tokens/s" in alerts[3]["text"]
    assert "PASS golden" in alerts[4]["text"]
    got = world["hook"].events("/hook")  # the real webhook: every alert, in order, as JSON
    assert [(g["event"], g["text"]) for g in got] == [(a["event"], a["text"]) for a in alerts]
    assert all({"event", "line", "time", "text"} <= set(g) for g in got) and got[1]["line"] == ""
    deadline = time.time() + 20
    while len(world["smtp"].messages) < len(alerts) and time.time() < deadline:
        time.sleep(0.2)
    assert len(world["smtp"].messages) == len(alerts) and all(world["smtp"].tls_seen)
    assert any("Subject: [rayft watch] accepted (en)" in m for m in world["smtp"].messages)

    status = json.loads((d / "status.json").read_text())
    assert status["lines"]["en"]["champion"] == champ and status["activity"] == "stopped"
    html = (d / "dashboard.html").read_text()
    assert 'http-equiv="refresh"' in html and "<svg" in html and champ in html and "c0001" in html
    rows = (d / "versions.csv").read_text().splitlines()
    assert rows[0].startswith("line,version,time,data_hash,model_hash,command") and champ in rows[1]
    assert (d / "lines/en/versions.csv").read_text().splitlines()[1] == rows[1]
    text = "\n".join(json.dumps(a) for a in alerts) + html + (d / "status.json").read_text()
    assert "SLACKSECRET" not in text and "s3cret-pass" not in text
    assert main(["watch", "status", f"dir={d}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["lines"]["en"]["champion"] == champ and printed["pending_commands"] == []
    print(f"first cycle: {world['first_s']:.0f} s")


def test_renamed_copy_and_half_written_file_are_not_ingested(world):
    d, inp = world["dir"], world["inp"]
    (inp / "renamed-copy.jsonl").write_bytes((inp / "file1.jsonl").read_bytes())
    part = world["spare"].joinpath("file2.jsonl").read_bytes()
    (inp / "growing.jsonl").write_bytes(part[: len(part) // 3])
    cfg = load(WatchConfig, REPO / "configs/watch.yaml", [f"input={inp}", f"dir={d}", "alerts.slack_webhook_env="],
               ALIASES)
    w = Watcher(cfg, d.resolve())
    assert w.scan() == [] and len(w.unstable) == 3  # first sight: nothing is stable yet
    with open(inp / "growing.jsonl", "ab") as f:  # still being written
        f.write(part[len(part) // 3: 2 * len(part) // 3])
    assert w.scan() == [] and [Path(p).name for p in w.unstable] == ["growing.jsonl"]  # the copy: in the ledger
    assert [Path(p).name for p, _ in w.scan()] == ["growing.jsonl"] and w.unstable == []  # stable now, and new
    (inp / "growing.jsonl").unlink()
    (inp / "renamed-copy.jsonl").unlink()
    w.alerts.close()
    led = json.loads((d / "curated/_ledger/ledger.json").read_text())
    assert len(led["runs"]) == 1 and len(led["files"]) == 1


def _supervisor_events(d: Path) -> list[dict]:
    return read_jsonl(d / "supervisor.jsonl") if (d / "supervisor.jsonl").exists() else []


def _wait(cond, what: str, d: Path, timeout: float = 600):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"{what}; supervisor: {_supervisor_events(d)}\n" + (
            (d / "daemon.log").read_text(errors="replace")[-3000:] if (d / "daemon.log").exists() else "")
        time.sleep(0.2)


def test_kill9_during_incremental_training_resumes_the_same_cycle(world, ray_session):
    """`watch.detached=true`: the daemon runs under a detached Ray actor. SIGKILL the daemon
    mid-training -> the supervisor restarts it; SIGKILL the supervisor -> Ray restarts it and
    it starts the daemon again; the same cycle finishes, nothing ingested or registered twice,
    and the actor removes itself once the daemon is done (once=true)."""
    from rayft.watch.detached import find

    d, inp = world["dir"], world["inp"]
    reg = Registry(str(d / "registry"), "en")
    v1 = reg.aliases()["champion"]
    (inp / "file2.jsonl").write_bytes((world["spare"] / "file2.jsonl").read_bytes())
    run = d / "lines/en/runs/c0002-incremental"
    assert main(["watch", "--config", str(REPO / "configs/watch.yaml"),
                 *_args(d, inp, world["hook"].url, steps=30), "watch.detached=true"]) == 0
    actor = find(d)
    assert actor is not None
    assert oct((d / ".supervisor_config.yaml").stat().st_mode & 0o777) == "0o600"  # may hold secrets
    _wait(lambda: list(run.glob("checkpoints/step_*/state.json")), "no checkpoint of the incremental run", d)
    first = [e for e in _supervisor_events(d) if e["event"] == "daemon_started"][-1]
    os.kill(first["pid"], signal.SIGKILL)  # the daemon
    _wait(lambda: len([e for e in _supervisor_events(d) if e["event"] == "daemon_started"]) >= 2,
          "the supervisor did not restart the daemon", d)
    cyc = _state(d)["lines"]["en"]["cycle"]
    assert cyc["id"] == "c0002" and cyc["stages"] == ["incremental"] and cyc["from_version"] == v1
    os.kill(first["supervisor_pid"], signal.SIGKILL)  # the supervisor actor's process: Ray restarts it
    _wait(lambda: find(d) is None, "the detached daemon did not finish", d, timeout=900)
    ev = _supervisor_events(d)
    starts = [e for e in ev if e["event"] == "daemon_started"]
    assert len(starts) >= 3 and len({e["supervisor_pid"] for e in starts}) == 2, ev
    assert {"event": "daemon_exited", "pid": first["pid"], "code": -9}.items() <= next(
        e for e in ev if e["event"] == "daemon_exited").items()
    assert ev[-1]["event"] == "supervisor_done" and ev[-1]["state"] == "finished", ev
    st = _state(d)["lines"]["en"]
    h = st["history"][-1]
    assert h["cycle"] == "c0002" and h["decision"] in ("promote", "reject") and h["reasons"]
    assert h["steps"][0]["attempt"] == 1  # the kill was not counted as a failed attempt
    rep = json.loads((run / "report.json").read_text())
    assert rep["resumed_from_step"] and rep["steps"] == 30  # Ray Train resumed from the checkpoint
    cfg = json.loads(json.dumps(rep["config"]))
    assert cfg["model"]["adapter"].endswith(f"/en/versions/{v1}/artifacts/adapter")  # from the champion
    mix = st["last_cycle"]["mix"]
    assert mix["replay_rows"] == min(mix["new_rows"], mix["old_rows"]) > 0  # 1:1 replay
    led = json.loads((d / "curated/_ledger/ledger.json").read_text())
    assert [r["run"] for r in led["runs"]] == ["r0001", "r0002"] and len(led["files"]) == 2
    vs = reg.versions()
    assert len({m["artifact_digest"] for m in vs}) == len(vs) == (2 if h["decision"] == "promote" else 1)
    assert reg.aliases()["champion"] == (h["version"] if h["decision"] == "promote" else v1)
    assert len(list((d / "lines/en/runs").glob("*/checkpoints/step_*"))) == 2  # watch.keep_checkpoints per line
    ev = [a["event"] for a in read_jsonl(d / "alerts.jsonl")]
    assert ev.count("accepted") + ev.count("rejected") == 2


def test_failing_stage_pauses_after_three_attempts_and_resume_clears_it(world):
    d, inp = world["dir"], world["inp"]
    (inp / "file3.jsonl").write_bytes((world["spare"] / "file3.jsonl").read_bytes())
    n0 = len(read_jsonl(d / "alerts.jsonl"))
    poisoned = TRAIN.format(steps=6).replace("]", ",model.name=/nonexistent/poisoned-model]")
    cfg = load(WatchConfig, REPO / "configs/watch.yaml",
               [*_args(d, inp, world["hook"].url), poisoned, *world["extra"]], ALIASES)
    t0 = time.time()
    run_watch(cfg)  # returns: the only line is paused, nothing else to do
    new = read_jsonl(d / "alerts.jsonl")[n0:]
    names = [a["event"] for a in new]
    assert names.count("stage_failed") == 3 and names.count("failed") == 1 and "paused" in names, names
    assert "poisoned-model" in next(a for a in new if a["event"] == "failed")["text"]
    st = _state(d)["lines"]["en"]
    assert st["paused"] and "failed 3 times" in st["pause_reason"]
    step = st["cycle"]["steps"][0]
    assert step["status"] == "failed" and step["attempt"] == 3 and st["cycle"]["version"] is None
    assert json.loads((d / "status.json").read_text())["lines"]["en"]["paused"]
    assert main(["watch", "resume", "en", f"dir={d}"]) == 0
    w = Watcher(cfg, d.resolve())
    w.apply_control()
    w.alerts.close()
    st = _state(d)["lines"]["en"]
    assert not st["paused"] and st["cycle"]["steps"][0] == {**step, "status": "pending", "attempt": 0}
    assert read_jsonl(d / "alerts.jsonl")[-1]["event"] == "resumed"
    assert time.time() - t0 < 180


def test_serve_answers_from_the_watch_registry(world):
    import requests
    from ray import serve

    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start

    d = world["dir"]
    champ = Registry(str(d / "registry"), "en").aliases()["champion"]
    cfg = load(ServeConfig, REPO / "configs/serve.yaml", [
        f"registry={d / 'registry'}", "models=[en]", f"port={closed_port()}", "num_cpus=0.5", "blocking=false",
        "max_tokens_default=4", "app_name=rayft_watch_test", "api_key_env=RAYFT_WATCH_TEST_NO_KEY"])
    url = start(cfg)
    try:
        r = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "en", "max_tokens": 4, "messages": [{"role": "user", "content": "The detective opens the letter."}]})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == f"en:{champ}"
    finally:
        serve.shutdown()
