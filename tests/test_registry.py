"""Registry: versions with lineage, atomic aliases, promote/rollback, keep-best-N, integrity.

Pure file-system tests (no Ray); run directories come from ``rayft.testing.runs``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from rayft.cli import main
from rayft.testing.runs import make_run
from rayft.registry import IntegrityError, Registry, RegistryError
from rayft.registry.lineage import run_artifact_digest


def _eval(decision="promote", champion=None, score=0.5):
    return {"decision": decision, "accept": decision == "promote",
            "reasons": [("PASS" if decision == "promote" else "FAIL") + " golden: test"],
            "champion_version": champion, "gate": {"golden_metric": "similarity"},
            "metrics": {"candidate": {"golden": {"similarity": score}}}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {i: make_run(d / f"r{i}", noise=0.05, lora_seed=i) for i in range(1, 5)}


def test_register_records_lineage_and_hashes(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"), "en")
    m = reg.register(runs[1], _eval())
    assert re.fullmatch(r"v\d{10}_[0-9a-f]{4}", m["version"])
    assert m["version"].endswith(m["artifact_digest"][:4])
    assert m["kind"] == "lora" and m["base_model"] == {"name": "tiny-qwen2", "seed": 0, "trust_remote_code": False}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json",
            "tokenizer/tokenizer.json"} <= set(m["artifacts"])
    assert all(len(a["sha256"]) == 64 for a in m["artifacts"].values())
    assert m["data"]["hash"] and m["config"]["model"]["name"] == "tiny-qwen2"
    assert m["command"]["train"] and m["eval"]["decision"] == "promote" and m["score"]["value"] == 0.5
    assert m["parent"] is None
    # immutable + idempotent: the same run and eval again is the same version
    assert reg.register(runs[1], _eval())["version"] == m["version"]
    assert [v["version"] for v in reg.versions()] == [m["version"]]
    assert reg.get(m["version"]) == m


def test_promote_rollback_move_aliases_atomically(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"))
    v1 = reg.register(runs[1], _eval(champion=None))["version"]
    a = reg.promote(v1)
    assert (a["champion"], a["previous"]) == (v1, None)
    v2 = reg.register(runs[2], _eval(champion=v1))["version"]
    assert reg.get(v2)["parent"] == v1
    a = reg.promote(v2)
    assert (a["champion"], a["previous"]) == (v2, v1)
    assert reg.resolve("champion") == v2 and reg.resolve("previous") == v1
    v3 = reg.register(runs[3], _eval(champion=v2))["version"]
    reg.promote(v3)
    a = reg.rollback()
    assert (a["champion"], a["previous"]) == (v2, v1)
    a = reg.rollback()
    assert (a["champion"], a["previous"]) == (v1, None)
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback()
    # alias file is always whole JSON (temp + rename), and the events log every move
    assert json.loads((tmp_path / "reg" / "default" / "aliases.json").read_text())["champion"] == v1
    events = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "reg" / "default" / "events").iterdir())
    assert events.count("promote.json") == 3 and events.count("rollback.json") == 2
    assert not list((tmp_path / "reg" / "default").glob("*.tmp"))


def test_promote_refuses_ungated_or_stale_evaluations(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"))
    v1 = reg.register(runs[1], _eval())["version"]
    bad = reg.register(runs[2], _eval("reject"))["version"]
    with pytest.raises(RegistryError, match="did not pass the gate.*FAIL golden"):
        reg.promote(bad)
    none = reg.register(runs[3], None)["version"]
    with pytest.raises(RegistryError, match="no evaluation"):
        reg.promote(none)
    reg.promote(v1)
    stale = reg.register(runs[4], _eval(champion=None))["version"]  # evaluated vs base, champion is v1 now
    with pytest.raises(RegistryError, match="evaluated against the base model, but the champion is now"):
        reg.promote(stale)
    assert reg.aliases()["champion"] == v1
    assert reg.promote(stale, force=True)["champion"] == stale


def test_unknown_refs_are_clear_errors(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"))
    with pytest.raises(RegistryError, match="alias 'champion' is not set"):
        reg.resolve("champion")
    with pytest.raises(RegistryError, match="unknown version 'v1234567890_abcd'"):
        reg.get("v1234567890_abcd")
    with pytest.raises(RegistryError, match="neither an alias"):
        reg.get("../../etc/passwd")
    with pytest.raises(RegistryError, match="registry name"):
        Registry(str(tmp_path / "reg"), "../x")


def test_tampered_artifact_is_refused_and_registry_unchanged(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"))
    v1 = reg.register(runs[1], _eval())["version"]
    reg.promote(v1)
    v2 = reg.register(runs[2], _eval(champion=v1))["version"]
    weights = tmp_path / "reg" / "default" / "versions" / v2 / "artifacts" / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = (tmp_path / "reg" / "default" / "aliases.json").read_bytes()
    with pytest.raises(IntegrityError, match="adapter_model.safetensors has sha256"):
        reg.promote(v2)
    with pytest.raises(IntegrityError):
        reg.fetch(v2)
    assert (tmp_path / "reg" / "default" / "aliases.json").read_bytes() == before
    # an extra (e.g. pickle) file dropped into a version is refused too
    (weights.parent / "pytorch_model.bin").write_bytes(b"\x80\x04")
    weights.write_bytes(bytes(data[:-1] + bytes([data[-1] ^ 0xFF])))
    with pytest.raises(IntegrityError, match="unregistered files"):
        reg.verify(v2)


def test_only_safetensors_can_be_registered(tmp_path):
    run = make_run(tmp_path / "r")
    (run / "adapter" / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(RegistryError, match="only safetensors"):
        Registry(str(tmp_path / "reg")).register(run)
    assert not (tmp_path / "reg" / "default" / "versions").exists()


def test_keep_best_never_deletes_aliased(tmp_path, runs):
    reg = Registry(str(tmp_path / "reg"))
    vs = {i: reg.register(runs[i], _eval(score=s))["version"] for i, s in ((1, 0.1), (2, 0.2), (3, 0.9), (4, 0.5))}
    reg.promote(vs[1])
    reg.promote(vs[2], force=True)  # champion=v2 (score .2), previous=v1 (score .1): the two worst
    gone = reg.cleanup(keep_best=1)
    assert gone == [vs[4]]
    assert {m["version"] for m in reg.versions()} == {vs[1], vs[2], vs[3]}
    assert not (tmp_path / "reg" / "default" / "versions" / vs[4]).exists()


def test_file_uri_and_fetch(tmp_path, runs):
    reg = Registry((tmp_path / "reg").as_uri(), "zh")  # file:// goes through pyarrow.fs.FileSystem.from_uri
    m = reg.register(runs[1], _eval())
    reg.promote(m["version"])
    got, path = reg.fetch("champion")
    assert got["version"] == m["version"] and (path / "adapter" / "adapter_config.json").exists()
    assert Registry(str(tmp_path / "reg"), "zh").resolve("champion") == m["version"]


def test_cli_list_show_add_promote_rollback(tmp_path, runs, capsys):
    uri = f"uri={tmp_path / 'reg'}"
    # eval.json is bound to the run it evaluated (rayft eval records the artifact digest)
    (runs[1] / "eval.json").write_text(json.dumps({**_eval(), "candidate": {
        "run": str(runs[1]), "artifact_digest": run_artifact_digest(runs[1])}}))
    assert main(["registry", "add", uri, f"run={runs[1]}"]) == 0
    v1 = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["registry", "promote", uri, f"version={v1}"]) == 0
    assert f"champion={v1}" in capsys.readouterr().out
    assert main(["registry", "add", uri, f"run={runs[2]}"]) == 0  # no eval.json: registered, not promotable
    v2 = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["registry", "promote", uri, f"version={v2}"]) == 2
    assert "did not pass the gate" in capsys.readouterr().err
    assert main(["registry", "promote", uri, f"version={v2}", "force=true"]) == 0
    capsys.readouterr()
    assert main(["registry", "list", uri]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{v1} .* previous", out) and re.search(rf"{v2} .* champion", out)
    assert main(["registry", "rollback", uri]) == 0
    assert f"champion={v1}" in capsys.readouterr().out
    assert main(["registry", "show", uri]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == v1
    assert main(["registry", "show", uri, "version=v1111111111_0000"]) == 2
    assert "unknown version" in capsys.readouterr().err
    # the job-file entry point runs the same command
    r = subprocess.run([sys.executable, "jobs/registry.py", "list", uri, "json=true"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["aliases"]["champion"] == v1
