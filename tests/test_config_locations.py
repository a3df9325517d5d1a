"""Locations that are local-only refuse any `scheme://` URI with one line naming the key (issue 16
item 2, first step): `run.dir=s3://bucket/runs` used to exit 0 and write into a local folder named
`s3:`. Registry locations keep the pyarrow.fs URIs they support. Pure: no Ray starts (the CLI
refuses before it would)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayft.config import ConfigError, FsPath, LocalPath, Section, check_location, load, opt, uri_scheme

REPO = Path(__file__).resolve().parents[1]
RAYFT = Path(sys.executable).parent / "rayft"
SECRET = "sEcReT-9f3a"
S3 = f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs?endpoint_override=127.0.0.1:9000&secret_key={SECRET}&scheme=http"


class _Loc(Section):
    out: LocalPath = opt("runs", "a local directory")
    reg: FsPath = opt("runs/registry", "a local path or pyarrow URI")


@pytest.mark.parametrize("value,scheme", [("s3://b/p", "s3"), ("S3://b/p", "s3"), ("gs://b", "gs"),
                                          ("file:///tmp/x", "file"), ("hdfs://nn:8020/x", "hdfs"),
                                          ("my+scheme.v2-x://h", "my+scheme.v2-x"), ("runs", None),
                                          ("/abs/s3://x", None), ("./s3:/x", None), ("C:\\runs", None),
                                          ("C:/runs", None), ("", None), ("s3:/one-slash", None),
                                          ("1s3://x", None)])
def test_uri_scheme(value, scheme):
    assert uri_scheme(value) == scheme


@pytest.mark.parametrize("value", ["runs", "/abs/dir", "~/runs", "", "C:\\runs", "rel/with:colon"])
def test_plain_paths_pass(value):
    assert check_location(value) == value
    assert _Loc.model_validate({"out": value}).out == value


@pytest.mark.parametrize("value,want", [
    ("s3://bucket/runs", "out: s3://bucket/runs is an object-store URI; rayft reads and writes local paths only"),
    ("gs://b/x", "is an object-store URI"),
    ("http://host/x", "out: http://host/x is a http:// URI"),
    ("file:///tmp/x", "is a file:// URI; this location takes a plain local path"),
])
def test_local_path_refuses_uris(value, want):
    with pytest.raises(ConfigError) as e:
        load(_Loc, None, [f"out={value}"])
    msg = str(e.value)
    assert want in msg and msg.startswith("command line: out: ") and "\n" not in msg
    with pytest.raises(ConfigError):  # assignments are validated too
        _Loc().out = value


def test_error_never_shows_credentials():
    for key in ("out", "reg"):
        bad = S3 if key == "out" else S3.replace("s3://", "ftp://")
        with pytest.raises(ConfigError) as e:
            load(_Loc, None, [f"{key}={bad}"])
        assert SECRET not in str(e.value) and "AKIAEXAMPLE" not in str(e.value), str(e.value)
        assert "bucket/runs?..." in str(e.value)


def test_fs_path_keeps_pyarrow_uris():
    for value in ("s3://bucket/reg?endpoint_override=127.0.0.1:9000&scheme=http", "file:///tmp/reg",
                  "gs://b/reg", "hdfs://nn/reg", "runs/registry"):
        assert _Loc.model_validate({"reg": value}).reg == value
    with pytest.raises(ConfigError, match=r"reg: ftp://h/r: no filesystem for ftp:// here; .*s3://"):
        load(_Loc, None, ["reg=ftp://h/r"])


def test_stage_configs_use_it():
    """Every location the issue names: local-only ones refuse s3://, registry ones accept it."""
    from rayft.cli import stage_config

    local = {"curate": "data.path", "eval": "output", "train": "data.path",
             "watch": "watch.dir", "frames embed": "embed.output", "frames cluster": "cluster.output",
             "frames export": "export.output", "frames segment": "segment.output",
             "frames train": "train.output", "export": "output", "data inspect": "out"}
    for stage, key in local.items():
        with pytest.raises(ConfigError, match=f"^command line: {key}: s3://b/p is an object-store URI"):
            stage_config(stage, None, [f"{key}=s3://b/p"])
    for stage, key in [("serve", "registry"), ("registry list", "uri"), ("eval", "registry.uri"), ("train", "run.dir"),
                       ("curate", "output.dir"), ("sweep", "sweep.dir"), ("eval", "candidate")]:
        with pytest.raises(ConfigError, match=f"{key}: ftp://b/p: no filesystem"):
            stage_config(stage, None, [f"{key}=ftp://b/p"])
    assert stage_config("registry list", None, ["uri=s3://b/reg"]).uri == "s3://b/reg"
    assert stage_config("train", None, ["run.dir=s3://b/runs", "data.path=p.jsonl"]).run.dir == "s3://b/runs"


def _cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")  # if it got as far as Ray, it would fail loudly
    return subprocess.run([str(RAYFT), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("argv,key", [
    (["curate", f"data.path={S3}", f"output.dir={REPO / 'configs'}"], "data.path"),
    (["frames", "embed", f"embed.output={S3}"], "embed.output"),
])
def test_cli_refuses_before_writing(tmp_path, argv, key):
    res = _cli(tmp_path, *argv)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"command line: {key}: s3://bucket/runs?... is an object-store URI" in lines[0]
    assert SECRET not in res.stdout + res.stderr
    assert list(tmp_path.iterdir()) == []  # no `s3:` folder, nothing else either


def test_train_refuses_a_scheme_without_filesystem_before_writing(tmp_path):
    """run.dir takes s3:// (tests/test_object_store.py); a scheme pyarrow has no filesystem for is
    one line, nothing written, no secret shown."""
    res = _cli(tmp_path, "train", "--config", str(REPO / "configs/tiny.yaml"), f"run.dir={S3.replace('s3://', 'ftp://')}")
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "command line: run.dir: ftp://bucket/runs?...: no filesystem for ftp://" in lines[0]
    assert SECRET not in res.stdout + res.stderr
    assert list(tmp_path.iterdir()) == []


def test_saved_config_drops_uri_credentials():
    """What run files record (config.yaml, report.json, checkpoint state): the location without
    its keys, still usable (credentials come from the environment); the command line masked."""
    from rayft.config import load, saved_command, saved_config
    from rayft.train.config import TrainConfig

    cfg = load(TrainConfig, None, ["data.path=x.jsonl", f"run.dir={S3}"])
    saved = saved_config(cfg)
    assert saved["run"]["dir"] == "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert SECRET not in str(saved) and "AKIAEXAMPLE" not in str(saved)
    assert SECRET not in saved_command(["rayft", "train", f"run.dir={S3}"])
