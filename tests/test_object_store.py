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
    # keys in the URI itself (pyarrow's key:secret@bucket) are never echoed either
    keyed = f"s3://{CREDS['AWS_ACCESS_KEY_ID']}:{CREDS['AWS_SECRET_ACCESS_KEY']}@{BUCKET}/nothing?endpoint_override={s3[0]}&scheme=http"
    assert main(["registry", "list", f"uri={keyed}"]) == 2
    err = capsys.readouterr().err
    assert f"registry s3://{BUCKET}/nothing: no such registry" in err
    assert CREDS["AWS_SECRET_ACCESS_KEY"] not in err and "Traceback" not in err


def test_registry_add_takes_a_run_in_the_bucket(s3, runs, capsys):
    """`rayft registry add run=s3://...` (a run trained with run.dir=s3://...): copied down,
    re-hashed, registered; a prefix without report.json is one line."""
    from rayft import objstore
    loc = objstore.filesystem(_uri(s3, "runs-made/r5"))
    for name in ("report.json", "adapter", "tokenizer"):
        objstore.upload(str(runs[5] / name), loc, name)
    uri = _uri(s3, "reg-from-bucket")
    assert main(["registry", "add", f"uri={uri}", f"run={_uri(s3, 'runs-made/r5')}"]) == 0
    v = capsys.readouterr().out.strip().splitlines()[-1]
    m = Registry(uri).verify(v)
    assert m["artifact_digest"] == Registry(uri).register(runs[5])["artifact_digest"]  # same artifacts
    assert main(["registry", "add", f"uri={uri}", f"run={_uri(s3, 'runs-made/nothing')}"]) == 2
    err = capsys.readouterr().err
    assert "no report.json" in err and len(err.strip().splitlines()) == 1


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


REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def test_run_dir_staging_pull_and_push(s3, tmp_path, monkeypatch):
    """The driver side of run.dir=s3://... without Ray: the newest checkpoint with a state.json
    (a half-written newer one is ignored) and metrics.jsonl come down into an empty staging
    directory; push copies the run up, report.json last and naming the bucket."""
    from rayft import objstore
    from rayft.config import load
    from rayft.train import remote
    from rayft.train.config import TrainConfig

    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "cache"))
    uri = _uri(s3, "runs-unit")
    cfg = load(TrainConfig, REPO / "configs/tiny.yaml", [f"run.dir={uri}", "run.name=r"])
    loc = remote.location(cfg)
    assert loc.shown == f"s3://{BUCKET}/runs-unit/r"
    assert remote.storage(cfg, tmp_path) == {"storage_path": f"{BUCKET}/runs-unit/r", "storage_filesystem": loc.fs}
    src = tmp_path / "src"
    for step in (2, 4):
        (src / f"step_{step:07d}" / "adapter").mkdir(parents=True)
        (src / f"step_{step:07d}" / "state.json").write_text(json.dumps({"step": step}))
        (src / f"step_{step:07d}" / "adapter" / "a.safetensors").write_bytes(b"x" * step)
    (src / "step_0000006").mkdir()  # no state.json: not a usable checkpoint
    (src / "step_0000006" / "optimizer.safetensors").write_bytes(b"partial")
    objstore.upload(str(src), loc, "checkpoints")
    (src / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    objstore.upload(str(src / "metrics.jsonl"), loc, "metrics.jsonl")

    staging = remote.local_run_dir(cfg)
    assert staging.parent.parent == tmp_path / "cache" / "runs"
    staging.mkdir(parents=True)
    assert remote.pull(cfg, staging) == "step_0000004"
    assert sorted(p.name for p in (staging / "checkpoints").iterdir()) == ["step_0000004"]
    assert (staging / "checkpoints/step_0000004/adapter/a.safetensors").read_bytes() == b"xxxx"
    assert (staging / "metrics.jsonl").read_text() == '{"step": 1, "loss": 2.0}\n'

    (staging / "adapter").mkdir()
    (staging / "adapter" / "adapter_model.safetensors").write_bytes(b"final")
    (staging / "workers").mkdir()
    (staging / "workers" / "rank0.pid").write_text("1")
    (staging / "report.json").write_text(json.dumps({"run_dir": str(staging), "checkpoint": "local"}))
    assert remote.push(cfg, staging) == loc.shown
    keys = _keys(s3, "runs-unit/r/")
    assert "runs-unit/r/adapter/adapter_model.safetensors" in keys and "runs-unit/r/report.json" in keys
    assert not any("/workers/" in k for k in keys)
    rep = json.loads(s3[1].get_object(Bucket=BUCKET, Key="runs-unit/r/report.json")["Body"].read())
    assert rep["run_dir"] == loc.shown and rep["checkpoint"] == f"{loc.shown}/checkpoints/step_0000004"
    # run.overwrite: the run in the bucket goes too
    assert remote.pull(cfg, staging, overwrite=True) is None
    assert _keys(s3, "runs-unit/r/") == []


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_run_dir_on_s3_checkpoints_publishes_and_resumes(s3, ray_session, tmp_path, monkeypatch, capsys):
    """`rayft train run.dir=s3://...`: Ray Train writes the checkpoints into the bucket, the
    report and adapter are published there, and a rerun (with an empty local cache, as on
    another machine) resumes from the bucket's checkpoint."""
    monkeypatch.chdir(tmp_path)  # nothing may land in a local folder literally named "s3:"
    uri = _uri(s3, "runs")
    args = ["train", "--config", str(REPO / "configs/tiny.yaml"), f"run.dir={uri}", "run.name=tiny-s3",
            f"data.path={SAMPLES}", "generate.prompt=", "train.max_steps=4", "train.checkpoint_every=2",
            "train.log_every=1", "scaling.num_workers=1"]
    assert main([*args, "train.stop_after_steps=2"]) == 0
    out1 = capsys.readouterr()
    shown = f"s3://{BUCKET}/runs/tiny-s3"
    assert out1.out.strip().splitlines()[-1] == shown
    keys = _keys(s3, "runs/tiny-s3/")
    assert "runs/tiny-s3/checkpoints/step_0000002/state.json" in keys
    assert "runs/tiny-s3/checkpoints/step_0000002/adapter/adapter_model.safetensors" in keys
    rep1 = json.loads(s3[1].get_object(Bucket=BUCKET, Key="runs/tiny-s3/report.json")["Body"].read())
    assert rep1["steps"] == 2 and not rep1["finished"] and rep1["run_dir"] == shown
    assert rep1["checkpoint"] == f"{shown}/checkpoints/step_0000002"
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())

    # the rerun starts from an empty staging directory: what it resumes from is in the bucket
    from rayft.config import load
    from rayft.train.config import TrainConfig
    from rayft.train.remote import local_run_dir
    staging = local_run_dir(load(TrainConfig, REPO / "configs/tiny.yaml", [f"run.dir={uri}", "run.name=tiny-s3"]))
    assert staging.is_dir() and "s3:" not in str(staging)
    import shutil
    shutil.rmtree(staging)
    # the rerun names its keys in the URI: they reach the bucket but no file written there
    secret = CREDS["AWS_SECRET_ACCESS_KEY"]
    keyed = f"{uri}&access_key={CREDS['AWS_ACCESS_KEY_ID']}&secret_key={secret}"
    assert main([a if not a.startswith("run.dir=") else f"run.dir={keyed}" for a in args]) == 0
    out2 = capsys.readouterr()
    assert out2.out.strip().splitlines()[-1] == shown
    assert "resuming from step 2" in out2.err
    keys = _keys(s3, "runs/tiny-s3/")
    for k in ("report.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
              "tokenizer/tokenizer.json", "metrics.jsonl", "config.yaml", "checkpoints/step_0000004/state.json",
              "report.html"):
        assert f"runs/tiny-s3/{k}" in keys, k
    rep = json.loads(s3[1].get_object(Bucket=BUCKET, Key="runs/tiny-s3/report.json")["Body"].read())
    assert rep["finished"] and rep["steps"] == 4 and rep["resumed_from_step"] == 2
    assert rep["checkpoint"] == f"{shown}/checkpoints/step_0000004"
    metrics = [json.loads(x) for x in s3[1].get_object(Bucket=BUCKET, Key="runs/tiny-s3/metrics.jsonl")[
        "Body"].read().decode().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert secret not in out1.out + out1.err + out2.out + out2.err + json.dumps(rep)
    for k in ("config.yaml", "report.json", "checkpoints/step_0000004/state.json"):
        text = s3[1].get_object(Bucket=BUCKET, Key=f"runs/tiny-s3/{k}")["Body"].read().decode()
        assert secret not in text and CREDS["AWS_ACCESS_KEY_ID"] not in text, k
    # train -> bucket -> registry -> what serving fetches
    reg_uri = _uri(s3, "reg-trained")
    assert main(["registry", "add", f"uri={reg_uri}", f"run={_uri(s3, 'runs/tiny-s3')}"]) == 0
    v = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["registry", "promote", f"uri={reg_uri}", f"version={v}", "force=true"]) == 0
    capsys.readouterr()
    m, local = Registry(reg_uri, cache_dir=tmp_path / "cache").fetch("champion")
    assert m["version"] == v and m["kind"] == "lora"
    assert (local / "adapter/adapter_model.safetensors").exists()
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())
