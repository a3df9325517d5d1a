"""Fuzz: random and forged registry manifests / alias files (hypothesis, bounded).

Invariants: reading, listing, verifying, fetching (local and remote paths) and the CLI
commands raise nothing but the registry's one-line errors, and never write a file outside
the registry and its cache directory. Pure file system (no Ray).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rayft.config import ConfigError
from rayft.registry import Registry, RegistryError
from rayft.registry.commands import RegistryConfig, run_list, run_show
from rayft.registry.lineage import run_artifact_digest
from rayft.testing.runs import make_run

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COUNTS: dict[str, int] = {}

_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                     max_leaves=12)
_evil_paths = st.sampled_from([
    "../../../../evil.txt", "../../../../../../tmp/rayft_fuzz_evil", "/tmp/rayft_fuzz_abs", "adapter/../../x",
    "adapter/./a.safetensors", "adapter//a", "", ".", "..", "adapter\\..\\..\\x", "C:/x", "file:///etc/passwd",
    "adapter/\x00.safetensors", "tokenizer/../../../../../evil.txt", "model/a/../../../..",
]) | st.text(alphabet="./\\adeprt_x", max_size=30)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzreg")
    run = make_run(d / "run", steps=1)
    reg = Registry(str(d / "reg"))
    ev = {"decision": "promote", "accept": True, "reasons": ["PASS"], "champion_version": None,
          "gate": {"golden_metric": "similarity"}, "metrics": {"candidate": {"golden": {"similarity": 0.5}}},
          "candidate": {"artifact_digest": run_artifact_digest(run)}}
    m = reg.register(run, ev)
    reg.promote(m["version"])
    return d, m


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def _exercise(root: Path, surface: str) -> None:
    """Every read path, locally and as a remote registry; only one-line errors allowed."""
    COUNTS[surface] = COUNTS.get(surface, 0) + 1
    reg = Registry(str(root / "reg"), cache_dir=root / "cache")
    calls = [reg.aliases, reg.versions, lambda: reg.get("champion"), lambda: reg.verify("champion"),
             lambda: reg.fetch("champion"), lambda: reg.cleanup(1),
             lambda: run_show(RegistryConfig(uri=str(root / "reg"))),
             lambda: run_list(RegistryConfig(uri=str(root / "reg"), json=True))]
    for call in calls:
        try:
            call()
        except (RegistryError, ConfigError) as e:
            assert "\n" not in str(e) and str(e)
    remote = Registry(str(root / "reg"), cache_dir=root / "cache")
    remote.store.local = False  # the download-into-cache path
    try:
        remote.fetch("champion")
    except RegistryError as e:
        assert "\n" not in str(e)


def _workdir(tmp_path_factory, base) -> tuple[Path, dict, Path]:
    d, m = base
    root = tmp_path_factory.mktemp("case")
    shutil.copytree(d / "reg", root / "reg")
    return root, m, root / "reg" / "default" / "versions" / m["version"] / "manifest.json"


def _check_no_escape(root: Path, before: set[str]) -> None:
    new = _files(root) - before
    outside = [p for p in new if not (p.startswith(str(root / "reg")) or p.startswith(str(root / "cache")))]
    assert outside == [], outside
    for p in ("/tmp/rayft_fuzz_evil", "/tmp/rayft_fuzz_abs", str(root.parent / "evil.txt"), str(root / "evil.txt")):
        assert not Path(p).exists(), p


@SETTINGS
@given(doc=_json)
def test_random_json_as_manifest(tmp_path_factory, base, doc):
    root, m, mpath = _workdir(tmp_path_factory, base)
    mpath.write_text(json.dumps(doc))
    before = _files(root)
    _exercise(root, "manifest: random JSON")
    _check_no_escape(root, before)
    shutil.rmtree(root)


@SETTINGS
@given(data=st.data())
def test_forged_manifest_fields(tmp_path_factory, base, data):
    """A valid manifest with one to three fields replaced by hostile or wrongly typed values,
    artifact paths included (absolute, '..', backslashes, NUL)."""
    root, m, mpath = _workdir(tmp_path_factory, base)
    forged = json.loads(mpath.read_text())
    (root / "reg" / "evil.txt").write_bytes(b"pwned")
    for _ in range(data.draw(st.integers(1, 3))):
        field = data.draw(st.sampled_from(["artifacts", "version", "kind", "base_model", "created", "eval",
                                           "score", "system_prompt", "artifact_digest", "extra"]))
        if field == "artifacts":
            arts = dict(forged["artifacts"]) if isinstance(forged.get("artifacts"), dict) else {}
            arts[data.draw(_evil_paths)] = data.draw(st.one_of(
                _json, st.just({"sha256": "e" * 64, "bytes": 5}),
                st.builds(lambda h: {"sha256": h}, st.text("0123456789abcdef", min_size=64, max_size=64))))
            forged["artifacts"] = arts
        elif field == "base_model":
            forged["base_model"] = data.draw(st.one_of(_json, st.fixed_dictionaries(
                {"name": st.one_of(st.text(max_size=10), _json), "trust_remote_code": _json, "seed": _json})))
        else:
            forged[field] = data.draw(_json)
    mpath.write_text(json.dumps(forged))
    before = _files(root)
    _exercise(root, "manifest: forged fields")
    try:
        got = Registry(str(root / "reg")).get("champion")
        assert got["base_model"]["trust_remote_code"] is False  # never turned on by a manifest
    except RegistryError:
        pass
    _check_no_escape(root, before)
    shutil.rmtree(root)


@SETTINGS
@given(doc=st.one_of(_json, st.fixed_dictionaries({"champion": st.one_of(st.text(max_size=30), _json,
                                                                          st.sampled_from(["../../x", "v1_abcd"])),
                                                    "history": _json})),
       raw=st.binary(max_size=64))
def test_random_alias_files(tmp_path_factory, base, doc, raw):
    root, m, _ = _workdir(tmp_path_factory, base)
    alias = root / "reg" / "default" / "aliases.json"
    for content in (json.dumps(doc).encode(), raw):
        alias.write_bytes(content)
        before = _files(root)
        _exercise(root, "aliases.json: random JSON / bytes")
        _check_no_escape(root, before)
    shutil.rmtree(root)


@SETTINGS
@given(raw=st.binary(max_size=256))
def test_random_bytes_as_manifest(tmp_path_factory, base, raw):
    root, m, mpath = _workdir(tmp_path_factory, base)
    mpath.write_bytes(raw)
    before = _files(root)
    _exercise(root, "manifest: random bytes")
    _check_no_escape(root, before)
    shutil.rmtree(root)


def test_zz_report_counts():
    print("\nfuzz registry inputs:", json.dumps(COUNTS))
    assert sum(COUNTS.values()) >= 4 * 100
