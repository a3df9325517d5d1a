"""cluster/ recipes: every YAML parses and carries what its kind needs (token auth on every Ray
process and on the KubeRay job submitter; the `ray up` file against Ray's own schema), their
entrypoints resolve to a real jobs/ file and a config rayft accepts, and the local-head scripts
write the token owner-only and stop processes by recorded pid, never by pattern.
Pure: no Ray cluster starts (the start script is made to fail at `ray start`'s flag parsing)."""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
BIN = Path(sys.executable).parent
YAMLS = sorted(CLUSTER.glob("*.yaml")) + sorted(CLUSTER.glob("*.yml"))


def _load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), f"{path.name}: not a mapping"
    return doc


def _kind(doc: dict) -> str:
    if "kind" in doc:
        return doc["kind"]
    if "cluster_name" in doc or "provider" in doc:
        return "ray-up"
    return "?"


def test_every_yaml_is_a_known_recipe():
    assert {p.name for p in YAMLS} >= {"kuberay-rayjob.yaml", "ray-up.yaml"}
    for p in YAMLS:
        assert _kind(_load(p)) in ("RayJob", "RayCluster", "ray-up"), f"{p.name}: unknown recipe kind"


def _token_env_ok(container: dict, secret: str, where: str) -> None:
    env = {e["name"]: e for e in container.get("env") or []}
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
    tok = env.get("RAY_AUTH_TOKEN")
    assert tok is not None, f"{where}: RAY_AUTH_TOKEN missing"
    assert "value" not in tok, f"{where}: token written into the manifest; take it from a Secret"
    ref = tok["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret and ref["key"], f"{where}: RAY_AUTH_TOKEN not from Secret {secret}"


def _check_ray_cluster_spec(spec: dict, secret: str, name: str) -> None:
    assert spec.get("rayVersion"), f"{name}: rayVersion"
    head = spec["headGroupSpec"]
    assert isinstance(head.get("rayStartParams"), dict), f"{name}: headGroupSpec.rayStartParams"
    heads = head["template"]["spec"]["containers"]
    assert heads and all(c.get("image") for c in heads), f"{name}: head container image"
    _token_env_ok(heads[0], secret, f"{name}: head")
    groups = spec.get("workerGroupSpecs") or []
    assert groups, f"{name}: no workerGroupSpecs"
    for g in groups:
        where = f"{name}: worker group {g.get('groupName')!r}"
        assert g.get("groupName") and isinstance(g.get("replicas"), int), where
        assert g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", g["replicas"]), where
        assert isinstance(g.get("rayStartParams"), dict), f"{where}: rayStartParams"
        cs = g["template"]["spec"]["containers"]
        assert cs and cs[0].get("image"), f"{where}: image"
        _token_env_ok(cs[0], secret, where)


def _secret_name(path: Path) -> str:
    """The Secret the recipe's own `kubectl create secret` comment creates."""
    m = re.search(r"kubectl create secret generic (\S+) --from-literal=(\w+)=", path.read_text())
    assert m, f"{path.name}: no `kubectl create secret generic ...` instruction"
    return m.group(1)


def _entrypoint_ok(entry: str, where: str) -> None:
    """`python jobs/<stage>.py --config FILE key=value ...`: the file exists and rayft accepts the
    config with those overrides (the same stage_config the CLI runs before Ray starts)."""
    from rayft.cli import STAGES, stage_config

    argv = shlex.split(entry)
    assert argv[0] == "python" and argv[1].startswith("jobs/"), f"{where}: entrypoint {entry!r}"
    job = REPO / argv[1]
    assert job.exists(), f"{where}: {argv[1]} does not exist"
    m = re.search(r"main\(\[([^*]*)\*sys\.argv", job.read_text())
    stage = " ".join(json.loads("[" + m.group(1).rstrip(", ") + "]"))
    assert stage in STAGES
    rest = argv[2:]
    config = None
    if "--config" in rest:
        i = rest.index("--config")
        config = str(REPO / rest[i + 1])
        rest = rest[:i] + rest[i + 2:]
    stage_config(stage, config, rest)


@pytest.mark.parametrize("path", [p for p in YAMLS if _kind(_load(p)) in ("RayJob", "RayCluster")],
                         ids=lambda p: p.name)
def test_kuberay_recipe(path):
    doc = _load(path)
    secret = _secret_name(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"], path.name
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        _check_ray_cluster_spec(spec, secret, path.name)
        return
    assert spec.get("entrypoint"), f"{path.name}: spec.entrypoint"
    _entrypoint_ok(spec["entrypoint"], path.name)
    _check_ray_cluster_spec(spec["rayClusterSpec"], secret, path.name)
    # the submitter (a Kubernetes Job running `ray job submit`) must authenticate too
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    pod = spec["submitterPodTemplate"]["spec"]
    assert pod.get("restartPolicy") in ("Never", "OnFailure"), f"{path.name}: submitter restartPolicy"
    sub = pod["containers"]
    assert len(sub) == 1 and sub[0].get("image"), f"{path.name}: one submitter container with an image"
    _token_env_ok(sub[0], secret, f"{path.name}: submitter")


@pytest.mark.parametrize("path", [p for p in YAMLS if _kind(_load(p)) == "ray-up"], ids=lambda p: p.name)
def test_ray_up_recipe(path):
    import jsonschema
    import ray.autoscaler

    doc = _load(path)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(doc, schema)  # the schema `ray up` itself validates against
    assert doc["cluster_name"] and doc["provider"]["type"], path.name
    if doc["provider"]["type"] == "local":
        assert doc["provider"].get("head_ip") and doc["provider"].get("worker_ips"), "local provider: ips"
    else:
        assert doc.get("available_node_types") and doc.get("head_node_type") in doc["available_node_types"]
    assert doc["auth"]["ssh_user"], path.name
    heads, workers = doc["head_start_ray_commands"], doc["worker_start_ray_commands"]
    assert any("ray start --head" in c for c in heads) and any("ray start --address" in c for c in workers)
    for c in heads + workers:
        assert "RAY_AUTH_MODE=token" in c, f"{path.name}: token auth off in {c!r}"
    assert any("--dashboard-host=127.0.0.1" in c for c in heads), "job server must stay on loopback"
    assert "~/.ray/auth_token" in doc.get("file_mounts", {}), "token not copied to the nodes"
    assert any("chmod 600 ~/.ray/auth_token" in c for c in doc.get("setup_commands", [])), \
        "copied token must be owner-only on the nodes"


def _code_lines(path: Path) -> list[str]:
    return [ln.split(" #")[0] for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]


def test_scripts_never_kill_by_pattern():
    for name in ("start_local_head.sh", "stop_local_head.sh"):
        code = "\n".join(_code_lines(CLUSTER / name))
        for bad in ("pgrep", "pkill", "killall", "ray stop"):
            assert bad not in code, f"{name} uses {bad}"
    stop = "\n".join(_code_lines(CLUSTER / "stop_local_head.sh"))
    assert "head.pids" in stop and "/proc/" in stop  # recorded pids, checked by start time


def _run_start(tmp_path: Path, home: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """The start script up to `ray start`, which then fails on an unknown flag: no Ray starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(HOME=str(home), PATH=f"{BIN}:{os.environ['PATH']}", RAYFT_HEAD_DIR=str(tmp_path / "head"),
               **(extra_env or {}))
    return subprocess.run(["bash", str(CLUSTER / "start_local_head.sh"), "--no-such-ray-start-flag"],
                          env=env, capture_output=True, text=True, timeout=120)


def test_start_writes_token_owner_only(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    res = _run_start(tmp_path, home)
    assert res.returncode != 0 and "no-such-ray-start-flag" in res.stdout + res.stderr  # ray start refused it
    tok = home / ".ray/auth_token"
    assert tok.read_text().strip(), "token not generated"
    assert stat.S_IMODE(tok.stat().st_mode) == 0o600
    assert stat.S_IMODE(tok.parent.stat().st_mode) == 0o700
    assert not (tmp_path / "head/head.pids").exists()  # nothing started, nothing recorded
    assert tok.read_text() not in res.stdout + res.stderr  # the token is never printed


def test_start_tightens_an_existing_token_and_keeps_it(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    tok = home / ".ray/auth_token"
    tok.write_text("a" * 32)
    tok.chmod(0o644)
    (home / ".ray").chmod(0o755)
    _run_start(tmp_path, home)
    assert tok.read_text() == "a" * 32  # not regenerated: clients already hold it
    assert stat.S_IMODE(tok.stat().st_mode) == 0o600
    assert stat.S_IMODE(tok.parent.stat().st_mode) == 0o700


def test_start_leaves_token_env_alone(tmp_path):
    """RAY_AUTH_TOKEN given: no file is written (the caller's token is used as is)."""
    home = tmp_path / "home"
    home.mkdir()
    _run_start(tmp_path, home, {"RAY_AUTH_TOKEN": "b" * 32})
    assert not (home / ".ray/auth_token").exists()


def test_stop_without_pid_file_kills_nothing(tmp_path):
    """A process whose command line names the head dir (what `pgrep -f` matched) survives stop."""
    head = tmp_path / "head"
    (head / "tmp").mkdir(parents=True)
    bystander = subprocess.Popen(["bash", "-c", "sleep 60", str(head / "tmp")])
    try:
        res = subprocess.run(["bash", str(CLUSTER / "stop_local_head.sh")], env=dict(os.environ,
                             RAYFT_HEAD_DIR=str(head)), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert bystander.poll() is None
        # a recorded pid whose start time no longer matches (reused pid) is left alone too
        (head / "head.pids").write_text(f"sid {bystander.pid}\n{bystander.pid} 1\n")
        res = subprocess.run(["bash", str(CLUSTER / "stop_local_head.sh")], env=dict(os.environ,
                             RAYFT_HEAD_DIR=str(head)), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert bystander.poll() is None and not (head / "head.pids").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_readme_job_submissions_resolve():
    """Every `ray job submit ... -- python jobs/X.py ...` the README shows names a real job file
    and a config rayft accepts (continuation lines joined; `...` placeholders skipped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = 0
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if "ray job submit" not in line or " -- python jobs/" not in line:
                continue
            entry = line.split(" -- ", 1)[1].split(" #")[0]
            if "..." in entry:
                continue
            _entrypoint_ok(entry, "README")
            found += 1
    assert found >= 3
