"""Issue 17, items 8-11 and 13 (registry part): forged manifests, remote code, eval binding,
kill -9 during ``registry add``, fsync, one-line CLI errors. Pure file system (no Ray)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayft.models.spec import manifest_spec
from rayft.registry import IntegrityError, Registry, RegistryError
from rayft.registry.lineage import run_artifact_digest
from rayft.testing.runs import make_run

CLI = [sys.executable, "-m", "rayft.cli"]


def _eval(run, decision="promote", champion=None, score=0.5):
    return {"decision": decision, "accept": decision == "promote",
            "reasons": [("PASS" if decision == "promote" else "FAIL") + " golden: test"],
            "champion_version": champion, "gate": {"golden_metric": "similarity"},
            "metrics": {"candidate": {"golden": {"similarity": score}}},
            "candidate": {"run": str(run), "artifact_digest": run_artifact_digest(run)}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {i: make_run(d / f"r{i}", noise=0.05, lora_seed=i, steps=1) for i in range(1, 4)}


def _manifest_path(reg: Registry, v: str) -> Path:
    return Path(reg.store.path(f"{reg.name}/versions/{v}/manifest.json"))


def _forge(reg: Registry, v: str, **changes) -> dict:
    p = _manifest_path(reg, v)
    m = json.loads(p.read_text())
    m.update(changes)
    p.write_text(json.dumps(m))
    return m


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


def _cli(*args, env=None, timeout=120):
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return r.returncode, r.stdout, r.stderr


def _one_line_error(rc, err):
    assert rc == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("rel", ["../../../../evil.txt", "adapter/../../../../../evil.txt"])
def test_remote_fetch_refuses_paths_escaping_the_version_dir(tmp_path, runs, rel):
    reg = Registry(str(tmp_path / "reg"), cache_dir=tmp_path / "cache")
    m = reg.register(runs[1], _eval(runs[1]))
    payload = b"echo pwned\n"
    (tmp_path / "reg" / "evil.txt").write_bytes(payload)  # what <version>/artifacts/../../../../evil.txt reads
    arts = dict(m["artifacts"], **{rel: {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}})
    _forge(reg, m["version"], artifacts=arts)
    before = _files(tmp_path)
    reg.store.local = False  # take the remote (download into the cache) path
    with pytest.raises(RegistryError, match="escapes the version directory"):
        reg.fetch(m["version"])
    assert _files(tmp_path) == before, "fetch wrote files"
    assert not (tmp_path / "evil.txt").exists()


def test_remote_fetch_refuses_absolute_paths_and_checks_hash_before_rename(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"), cache_dir=tmp_path / "cache")
    m = reg.register(runs[1], _eval(runs[1]))
    target = tmp_path / "abs_target.txt"
    _forge(reg, m["version"], artifacts=dict(m["artifacts"], **{str(target): {"sha256": "0" * 64, "bytes": 1}}))
    reg.store.local = False
    with pytest.raises(RegistryError, match="is absolute"):
        reg.fetch(m["version"])
    assert not target.exists()
    # a tampered artifact: refused, and no file (final or temp) is left under its name
    _forge(reg, m["version"], artifacts=m["artifacts"])
    w = tmp_path / "reg" / "default" / "versions" / m["version"] / "artifacts" / "adapter" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="downloaded adapter/adapter_model.safetensors"):
        reg.fetch(m["version"])
    cached = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert not any(n == "adapter_model.safetensors" or n.endswith(".part") for n in cached), cached


def test_forged_manifests_are_refused_with_one_line(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"))
    m = reg.register(runs[1], _eval(runs[1]))
    v = m["version"]
    for changes, msg in [({"version": "../../x"}, r"expected .*\(its directory name\)"),
                         ({"artifacts": {"adapter/a.safetensors": {"sha256": "xyz"}}}, "64 hex"),
                         ({"kind": "pickle"}, "'kind'"),
                         ({"base_model": {"name": 3}}, "base_model.name")]:
        _forge(reg, v, **{**m, **changes})
        with pytest.raises(RegistryError, match=msg):
            reg.get(v)
        assert reg.versions() == []  # listing skips it instead of failing
    _manifest_path(reg, v).write_text("{not json")
    with pytest.raises(RegistryError, match=r"manifest.json: corrupt manifest: expected JSON"):
        reg.get(v)


# ----------------------------------------------------------------------------- item 9
def test_manifest_never_turns_on_remote_code(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"))
    m = reg.register(runs[1], _eval(runs[1]))
    _forge(reg, m["version"], base_model={**m["base_model"], "trust_remote_code": True})
    got, local = reg.fetch(m["version"])
    assert got["base_model"]["trust_remote_code"] is False
    assert got["base_model"]["trust_remote_code_recorded"] is True
    # even a manifest dict that was not read through the registry cannot turn it on
    raw = json.loads(_manifest_path(reg, m["version"]).read_text())
    assert manifest_spec(raw, local, "x")["trust_remote_code"] is False
    assert manifest_spec(raw, local, "x", trust_remote_code=True)["trust_remote_code"] is True  # explicit only


def test_forged_remote_code_base_model_is_never_executed(tmp_path, runs):
    """A version whose base model is a directory shipping its own code (auto_map) and whose
    manifest asks for trust_remote_code: loading it must not run that code."""
    from rayft.models.spec import load_spec

    base = tmp_path / "evil_base"
    base.mkdir()
    marker = tmp_path / "EXECUTED"
    code = f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import PretrainedConfig\n" \
           "class EvilConfig(PretrainedConfig):\n    model_type = 'evil-remote'\n"
    (base / "evil_cfg.py").write_text(code)
    (base / "config.json").write_text(json.dumps({"model_type": "evil-remote", "architectures": ["EvilModel"],
                                                  "auto_map": {"AutoConfig": "evil_cfg.EvilConfig",
                                                               "AutoModelForCausalLM": "evil_cfg.EvilModel"}}))
    reg = Registry(str(tmp_path / "reg"))
    m = reg.register(runs[1], _eval(runs[1]))
    _forge(reg, m["version"], base_model={"name": str(base), "seed": 0, "trust_remote_code": True})
    got, local = reg.fetch(m["version"])
    with pytest.raises(Exception, match="(?i)trust_remote_code|remote code|evil-remote"):
        load_spec(manifest_spec(got, local, "champion"))
    assert not marker.exists(), "the manifest turned remote code on"


# ----------------------------------------------------------------------------- item 10
def test_registry_add_refuses_another_runs_eval(tmp_path, runs):
    uri = f"uri={tmp_path / 'reg'}"
    a, b = runs[1], runs[2]
    ev_a = tmp_path / "a_eval.json"
    ev_a.write_text(json.dumps(_eval(a)))
    rc, out, err = _cli("registry", "add", uri, f"run={b}", f"eval={ev_a}")
    line = _one_line_error(rc, err)
    assert "eval.json was made for artifacts" in line and str(b) in line
    assert not (tmp_path / "reg" / "default" / "versions").exists() or \
        not list((tmp_path / "reg" / "default" / "versions").glob("v*"))
    # an eval.json that carries no digest (older rayft eval, or hand-written) cannot promote anything
    unbound = {k: v for k, v in _eval(a).items() if k != "candidate"}
    ev_a.write_text(json.dumps(unbound))
    line = _one_line_error(*_cli("registry", "add", uri, f"run={a}", f"eval={ev_a}")[::2])
    assert "no candidate.artifact_digest" in line
    # its own eval.json binds: registered with the gate decision
    ev_a.write_text(json.dumps(_eval(a)))
    rc, out, err = _cli("registry", "add", uri, f"run={a}", f"eval={ev_a}")
    assert rc == 0, err
    m = Registry(str(tmp_path / "reg")).get(out.strip().splitlines()[-1])
    assert m["eval"]["decision"] == "promote" and m["eval"]["artifact_digest"] == m["artifact_digest"]
    # library path too
    with pytest.raises(RegistryError, match="eval.json was made for artifacts"):
        Registry(str(tmp_path / "reg")).register(b, _eval(a))


# ----------------------------------------------------------------------------- item 11
def test_orphans_of_a_killed_add_are_collected(tmp_path, runs):
    """What a writer killed mid-upload leaves (a version dir without manifest, a temp upload
    dir) is removed by the next add and by cleanup; complete versions are untouched."""
    reg = Registry(str(tmp_path / "reg"))
    v1 = reg.register(runs[1], _eval(runs[1]))["version"]
    versions = tmp_path / "reg" / "default" / "versions"
    orphan = versions / "v1700000000_dead" / "artifacts" / "adapter"
    orphan.mkdir(parents=True)
    (orphan / "adapter_model.safetensors").write_bytes(b"partial")
    tmp = versions / f".tmp-{int(time.time())}-v1700000001_beef-12345678" / "artifacts"
    tmp.mkdir(parents=True)
    (tmp / "x.safetensors").write_bytes(b"partial")
    reg.register(runs[2], _eval(runs[2]))
    assert sorted(p.name for p in versions.iterdir()) == sorted(m["version"] for m in reg.versions())
    assert v1 in {m["version"] for m in reg.versions()}
    orphan.mkdir(parents=True)
    assert Registry(str(tmp_path / "reg")).cleanup(keep_best=0) == [] and not (versions / "v1700000000_dead").exists()


def test_kill_9_during_registry_add_then_next_add_cleans_up(tmp_path, runs):
    uri = f"uri={tmp_path / 'reg'}"
    p = subprocess.Popen([*CLI, "registry", "add", uri, f"run={runs[1]}"], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "RAYFT_REGISTRY_PAUSE_AFTER_UPLOAD": "60"})
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            line = p.stderr.readline()
            if "RAYFT_REGISTRY_PAUSE_AFTER_UPLOAD" in line or not line:
                break
        assert "RAYFT_REGISTRY_PAUSE_AFTER_UPLOAD" in line, "add never reached the upload"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    versions = tmp_path / "reg" / "default" / "versions"
    left = [d.name for d in versions.iterdir()]
    assert left and all(d.startswith(".tmp-") for d in left), left  # only a temp dir, never a half version
    assert Registry(str(tmp_path / "reg")).versions() == []
    rc, out, err = _cli("registry", "add", uri, f"run={runs[1]}")
    assert rc == 0, err
    assert [d.name for d in versions.iterdir()] == [out.strip().splitlines()[-1]]


def test_renames_are_fsynced(tmp_path, runs, monkeypatch):
    from rayft import storage

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    storage.atomic_write_json(tmp_path / "d" / "x.json", {"a": 1})
    assert str(tmp_path / "d") in synced  # the directory entry of the rename, not only the file
    synced.clear()
    reg = Registry(str(tmp_path / "reg"))
    v = reg.register(runs[1], _eval(runs[1]))["version"]
    vdir = tmp_path / "reg" / "default" / "versions" / v
    assert any(p.endswith("/artifacts/adapter/adapter_model.safetensors") for p in synced)  # before the rename
    assert str(tmp_path / "reg" / "default" / "versions") in synced and str(vdir) in synced


# ----------------------------------------------------------------------------- item 13
def test_cli_one_line_errors_for_missing_registry_and_corrupt_files(tmp_path, runs):
    missing = tmp_path / "no" / "such" / "registry"
    for action in (["list"], ["show"], ["promote", "version=champion"], ["rollback"], ["cleanup", "keep_best=1"]):
        line = _one_line_error(*_cli("registry", *action, f"uri={missing}")[::2])
        assert "no such registry" in line and str(missing) in line
    assert not missing.exists()  # nothing created by a read or a refused write

    reg_dir = tmp_path / "reg"
    uri = f"uri={reg_dir}"
    bad_eval = tmp_path / "eval.json"
    bad_eval.write_text('{"decision": "promote", "candidate": ')
    line = _one_line_error(*_cli("registry", "add", uri, f"run={runs[1]}", f"eval={bad_eval}")[::2])
    assert str(bad_eval) in line and "corrupt eval.json" in line
    bad_eval.write_text(json.dumps({**_eval(runs[1]), "metrics": {"candidate": {"golden": {"similarity": "high"}}}}))
    line = _one_line_error(*_cli("registry", "add", uri, f"run={runs[1]}", f"eval={bad_eval}")[::2])
    assert "must be a number" in line

    run = make_run(tmp_path / "corrupt_run", steps=1)
    (run / "report.json").write_text("{\x00")
    line = _one_line_error(*_cli("registry", "add", uri, f"run={run}")[::2])
    assert str(run / "report.json") in line and "corrupt report.json" in line

    rc, out, err = _cli("registry", "add", uri, f"run={runs[1]}")
    assert rc == 0, err
    v = out.strip().splitlines()[-1]
    (reg_dir / "default" / "versions" / v / "manifest.json").write_text("[1, 2")
    line = _one_line_error(*_cli("registry", "show", uri, f"version={v}")[::2])
    assert "manifest.json: corrupt manifest" in line
    (reg_dir / "default" / "aliases.json").write_text('{"champion": "../../../etc"}')
    line = _one_line_error(*_cli("registry", "show", uri)[::2])
    assert "aliases.json" in line and "expected a version id" in line


def test_serve_turns_remote_code_on_only_by_its_own_config(tmp_path, runs):
    """A forged manifest cannot make `rayft serve` load its base with remote code; the serve
    config's trust_remote_code is the one switch."""
    from rayft.config import from_dict
    from rayft.serve.app import build_app
    from rayft.serve.config import ServeConfig

    reg = Registry(str(tmp_path / "reg"))
    m = reg.register(runs[1], _eval(runs[1]))
    reg.promote(m["version"])
    _forge(reg, m["version"], base_model={**m["base_model"], "trust_remote_code": True})

    def base_flags(**over):
        app = build_app(from_dict(ServeConfig, {"registry": str(tmp_path / "reg"), **over}))
        args = app._bound_deployment.init_args
        if over.get("topology") == "split":  # model deployments bound as the gateway's handles
            return [s._bound_deployment.init_args[0]["trust_remote_code"] for s in args[1].values()]
        return [a[0]["trust_remote_code"] for a in args[3].values()]  # single: built in the gateway

    for topology in ("auto", "split"):
        assert base_flags(topology=topology) == [False]
        assert base_flags(topology=topology, trust_remote_code=True) == [True]
