"""Object-store locations (issue 16 item 2) against a REAL S3-protocol server: moto's standalone
server (``python -m moto.server``) started here on 127.0.0.1 as a subprocess.

* the registry on ``s3://bucket/prefix?endpoint_override=...&scheme=http``: add / promote /
  rollback / list through the CLI, serving's reads (Router, fetch + sha256 check);
* S3 conditional writes: a stale ETag or a second create is refused by the server, and two
  processes promoting at once leave a consistent registry with every promotion recorded;
* (train) ``rayft train run.dir=s3://...``: checkpoints through Ray Train's storage_filesystem,
  report.json + adapter published to the bucket, and a rerun resumes from the bucket.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayft.cli import main
from rayft.registry import Registry, RegistryError
from rayft.testing.net import free_port
from rayft.testing.runs import make_run

pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

BUCKET = "rayft-test"
CREDS = {"AWS_ACCESS_KEY_ID": "rayft-test-key", "AWS_SECRET_ACCESS_KEY": "rayft-test-secret-do-not-print",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """(endpoint host:port, boto3 client) of a moto S3 server on 127.0.0.1, bucket created."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.2)
        old = {k: os.environ.get(k) for k in CREDS}
        os.environ.update(CREDS)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket=BUCKET)
        yield f"127.0.0.1:{port}", client
    finally:
        for k, v in locals().get("old", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _uri(s3, prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}?endpoint_override={s3[0]}&scheme=http"


def _keys(s3, prefix: str) -> list[str]:
    pages = s3[1].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    return {i: make_run(d / f"r{i}", noise=0.05, lora_seed=i) for i in range(1, 9)}


def _eval(champion=None):
    return {"decision": "promote", "accept": True, "reasons": ["PASS golden: test"],
            "champion_version": champion, "gate": {"golden_metric": "similarity"},
            "metrics": {"candidate": {"golden": {"similarity": 0.5}}}}


def test_registry_cli_add_promote_rollback_list(s3, runs, capsys):
    uri = _uri(s3, "reg-cli")
    assert main(["registry", "add", f"uri={uri}", f"run={runs[1]}"]) == 0
    v1 = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["registry", "add", f"uri={uri}", f"run={runs[2]}"]) == 0
    v2 = capsys.readouterr().out.strip().splitlines()[-1]
    assert v1 != v2
    keys = _keys(s3, "reg-cli/")
    assert f"reg-cli/default/versions/{v1}/manifest.json" in keys
    assert f"reg-cli/default/versions/{v2}/artifacts/adapter/adapter_model.safetensors" in keys
    assert not any(k.startswith("reg-cli/default/versions/.tmp-") for k in keys)  # no temp dirs on S3

    assert main(["registry", "promote", f"uri={uri}", f"version={v1}", "force=true"]) == 0
    assert main(["registry", "promote", f"uri={uri}", f"version={v2}", "force=true"]) == 0
    assert f"champion={v2} previous={v1}" in capsys.readouterr().out
    assert main(["registry", "rollback", f"uri={uri}"]) == 0
    assert f"champion={v1} previous=None" in capsys.readouterr().out
    assert main(["registry", "list", f"uri={uri}", "json=true"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["version"] for m in listed["versions"]} == {v1, v2}
    assert listed["aliases"]["champion"] == v1 and listed["aliases"]["history"] == [v1]
    aliases = json.loads(s3[1].get_object(Bucket=BUCKET, Key="reg-cli/default/aliases.json")["Body"].read())
    assert aliases["champion"] == v1
    # the same run again is the same version (idempotent), on S3 too
    assert main(["registry", "add", f"uri={uri}", f"run={runs[1]}"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == v1
    # a registry that does not exist in the bucket is one line, not an empty listing
    assert main(["registry", "list", f"uri={_uri(s3, 'no-such-registry')}"]) == 2
    err = capsys.readouterr().err
    assert "no such registry" in err and "Traceback" not in err
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in err


def test_serving_reads_the_s3_registry(s3, runs, tmp_path, monkeypatch):
    """What `rayft serve` does with a registry: the Router reads the champion alias (hot swap
    by polling), and each replica fetches a version into its cache, sha256-checked."""
    from peft import PeftModel

    from rayft.models.load import load_model, load_tokenizer, resolve_source
    from rayft.serve.routing import Router

    # the endpoint from AWS_ENDPOINT_URL instead of the URI (what a cluster's env would carry)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3[0]}")
    uri = f"s3://{BUCKET}/reg-serve"
    reg = Registry(uri, "en", cache_dir=tmp_path / "cache")
    v1 = reg.register(runs[3], _eval())["version"]
    reg.promote(v1)
    router = Router(uri, ["en"], {}, "en", refresh_s=0.0)
    assert router.serving["en"] == v1
    v2 = reg.register(runs[4], _eval(champion=v1))["version"]
    reg.promote(v2)
    assert router.pending() == {"en": v2}
    m, local = reg.fetch("champion")
    assert m["version"] == v2 and str(local).startswith(str(tmp_path / "cache"))
    src = resolve_source("tiny-qwen2")
    tok = load_tokenizer(str(local / "tokenizer"))
    model = PeftModel.from_pretrained(load_model(src, tok, "float32"), str(local / "adapter"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0
    # a tampered artifact in the bucket is refused on fetch
    key = f"reg-serve/en/versions/{v1}/artifacts/adapter/adapter_model.safetensors"
    body = bytearray(s3[1].get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[-1] ^= 1
    s3[1].put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    with pytest.raises(RegistryError, match="sha256"):
        Registry(uri, "en", cache_dir=tmp_path / "cache2").fetch(v1)


def test_conditional_writes_are_enforced_by_the_server(s3):
    """The guarantee rests on the server refusing stale writes: check it does."""
    from rayft.registry.fs import Store

    st = Store(_uri(s3, "cas"))
    assert st.cas
    assert st.read_tagged("x.json") == (None, None)
    assert st.write_if("x.json", b"1", None)
    assert not st.write_if("x.json", b"2", None)          # create-only: exists
    data, tag = st.read_tagged("x.json")
    assert data == b"1"
    assert st.write_if("x.json", b"3", tag)
    assert not st.write_if("x.json", b"4", tag)           # stale ETag
    assert st.read_tagged("x.json")[0] == b"3"


PROMOTER = r"""
import sys, time
from rayft.registry import Registry
uri, start, versions = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
reg = Registry(uri, "race")
time.sleep(max(0.0, start - time.time()))
t0 = time.time()
for v in versions:
    reg.promote(v, force=True)
print(t0, time.time(), reg.cas_conflicts, flush=True)
"""


def test_two_processes_promoting_at_once_lose_nothing(s3, runs):
    uri = _uri(s3, "reg-race")
    reg = Registry(uri, "race")
    vs = [reg.register(runs[i], _eval())["version"] for i in range(1, 9)]
    assert len(set(vs)) == 8
    reg.promote(vs[0], force=True)
    a_vs, b_vs = vs[1:8:2] + vs[1:8:2], vs[2:8:2] + vs[2:8:2]  # each promotes its versions twice
    start = time.time() + 5  # both import and connect first, then promote at the same moment
    # each promoter holds its read of aliases.json 0.3 s before the conditional write, so the
    # two read-modify-write windows overlap and one of them must lose and retry
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"),
               RAYFT_REGISTRY_PAUSE_BEFORE_ALIAS_WRITE="0.3")
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTER, uri, str(start), *mine], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for mine in (a_vs, b_vs)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    (a0, a1, ca), (b0, b1, cb) = [map(float, o[0].split()[-3:]) for o in outs]
    assert a0 < b1 and b0 < a1, "the two promoters did not overlap in time"
    print(f"alias writes retried after losing a race: {int(ca)} + {int(cb)}")
    a = reg.aliases()
    hist = a["history"]
    # every promotion is in the history exactly as applied: nothing overwritten by a racing writer
    moves = [h for i, h in enumerate(hist) if i == 0 or hist[i - 1] != h]
    assert len(moves) == len(hist)
    promoted = [h for h in hist[1:]]
    assert sorted(promoted) == sorted(a_vs + b_vs), (hist, a_vs, b_vs)
    # each process's own promotions appear in its order
    for mine in (a_vs, b_vs):
        assert [h for h in promoted if h in mine] == mine
    assert a["champion"] == hist[-1] and a["previous"] == hist[-2]
    assert ca + cb > 0, "no write ever lost a race: the test did not exercise the conditional write"
    events = [k for k in _keys(s3, "reg-race/race/events/") if k.endswith("-promote.json")]
    assert len(events) == 1 + len(a_vs) + len(b_vs)
    # every version is still there and intact
    assert [m["version"] for m in reg.versions()] == vs
    for v in vs:
        reg.verify(v)
