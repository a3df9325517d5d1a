"""Object-store locations for the other stages (issue 16 item 2), against the same REAL moto S3
server as tests/test_object_store.py (its ``s3`` fixture, started here on 127.0.0.1):

* ``rayft curate output=s3://...``: kept/rejects/report/ledger in the bucket, rows in = kept +
  rejected, an incremental rerun from another machine (empty cache) equals one local run over
  the same files, leftovers of a killed run are cleaned, an unchanged rerun writes nothing;
* ``rayft sweep sweep.dir=s3://...``: Tune's experiment, the trials' runs and the sweep's
  summary files in the bucket;
* ``rayft eval candidate=s3://...``: the run is fetched into a local cache, eval.json is
  written back beside it.

Nothing may land in a local folder literally named ``s3:`` (every test runs in tmp_path).
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayft.cli import main
import test_object_store
from test_object_store import BUCKET, _keys, _uri

s3 = test_object_store.s3  # the moto server fixture (module scope: one server for this module)

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def _get(s3, key: str) -> bytes:
    return s3[1].get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _no_s3_folder(*dirs: Path) -> None:
    for d in dirs:
        assert not any(p.name.startswith("s3") for p in Path(d).rglob("*")), d


@pytest.mark.timeout(600)
def test_curate_output_on_s3(s3, ray_session, tmp_path, monkeypatch, capsys):
    from rayft.testing import curate_score as score
    from rayft.testing import pairs as synth

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "cache-a"))
    info = synth.generate(tmp_path / "gen", n=400, seed=5, n_files=4)
    files = sorted(Path(info["data"]).iterdir())
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for f in files[:2]:
        shutil.copy(f, inbox / f.name)
    uri = _uri(s3, "cur")
    cur = ["curate", "--config", str(REPO / "configs/curate.yaml"), f"input={inbox}", f"output={uri}",
           "split.min_val_rows=0"]
    assert main(cur) == 0
    out = capsys.readouterr().out
    assert "curated r0001" in out and f"-> s3://{BUCKET}/cur " in out and "endpoint_override" not in out
    keys = _keys(s3, "cur/")
    for k in ("cur/_ledger/ledger.json", "cur/report.json", "cur/reports/r0001.json", "cur/_ledger/accepted-r0001.arrow"):
        assert k in keys, k
    assert not any("_staging" in k or k.endswith(".lock") for k in keys)
    rep = json.loads(_get(s3, "cur/report.json"))
    assert rep["run"] == "r0001" and rep["rows_in"] == rep["rows_kept"] + rep["rows_rejected"] > 0
    kept = sum(pq.read_table(io.BytesIO(_get(s3, k))).num_rows for k in keys if k.endswith(".parquet"))
    rejected = sum(len(_get(s3, k).splitlines()) for k in keys if k.startswith("cur/rejects/"))
    assert (kept, rejected) == (rep["rows_kept"], rep["rows_rejected"])

    # a run killed after publishing part of its files (never committed to the ledger)
    s3[1].put_object(Bucket=BUCKET, Key="cur/rejects/r0002.bogus.jsonl", Body=b"{}\n")
    s3[1].put_object(Bucket=BUCKET, Key="cur/report.json", Body=json.dumps({"run": "r0002"}).encode())
    # the rerun on "another machine": empty cache; it ingests the two new files only
    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "cache-b"))
    for f in files[2:]:
        shutil.copy(f, inbox / f.name)
    assert main(cur) == 0
    assert "curated r0002" in capsys.readouterr().out
    keys = _keys(s3, "cur/")
    assert "cur/rejects/r0002.bogus.jsonl" not in keys
    rep2 = json.loads(_get(s3, "cur/report.json"))
    assert rep2["run"] == "r0002" and rep2["files"]["ingested"] == 2 and rep2["files"]["skipped_unchanged"] == 2
    assert rep2["rows_in"] == rep2["rows_kept"] + rep2["rows_rejected"]
    led = json.loads(_get(s3, "cur/_ledger/ledger.json"))
    assert [r["run"] for r in led["runs"]] == ["r0001", "r0002"]

    # what the bucket holds equals one local run over the same four files (no row lost or doubled)
    ref_in = tmp_path / "ref_in"
    ref_in.mkdir()
    for f in files:
        shutil.copy(f, ref_in / f.name)
    assert main([*cur[:4], f"input={ref_in}", f"output={tmp_path / 'ref'}", "split.min_val_rows=0"]) == 0
    capsys.readouterr()
    from rayft import objstore
    got = tmp_path / "from-bucket"
    objstore.download(objstore.filesystem(uri), "", str(got))

    def keyed(d):
        k, r = score.read_outputs(d)
        return ({(Path(f).name, ln): x["split"] for (f, ln), x in k.items()},
                {(Path(f).name, ln): x["filter"] for (f, ln), x in r.items()})
    assert keyed(got) == keyed(tmp_path / "ref")

    # unchanged rerun: nothing written to the bucket
    before = {o["Key"]: o["ETag"] for o in s3[1].list_objects_v2(Bucket=BUCKET, Prefix="cur/")["Contents"]}
    assert main(cur) == 0
    assert capsys.readouterr().out.startswith("nothing to do")
    after = {o["Key"]: o["ETag"] for o in s3[1].list_objects_v2(Bucket=BUCKET, Prefix="cur/")["Contents"]}
    assert before == after
    # a curate input in the bucket is refused in one line naming the key
    assert main([*cur[:4], f"input={uri}", f"output={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    _no_s3_folder(tmp_path)


@pytest.mark.timeout(600)
def test_eval_candidate_in_the_bucket(s3, ray_session, tmp_path, monkeypatch, capsys):
    """A run in the bucket is fetched into a local cache keyed by its URI, scored, and its
    eval.json lands beside it in the bucket (where `rayft registry add run=s3://...` reads it)."""
    from rayft import objstore
    from rayft.testing.runs import make_run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "cache"))
    run = make_run(tmp_path / "made", noise=0.05, lora_seed=3)
    uri = _uri(s3, "eval-runs/cand")
    loc = objstore.filesystem(uri)
    for name in ("report.json", "adapter", "tokenizer"):
        objstore.upload(str(run / name), loc, name)
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(SAMPLES.read_text(encoding="utf-8").splitlines(keepends=True)[:12]), encoding="utf-8")
    args = ["eval", "--config", str(REPO / "configs/eval.yaml"), f"candidate={uri}", f"data.golden={golden}",
            f"data.val={golden}", "data.max_rows=6", "score.generate=false", "gate.golden_metric=loss",
            "data.max_seq_len=128", f"registry.uri={tmp_path / 'reg'}", "registry.promote=false"]
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc in (0, 3), err[-3000:]  # accepted or rejected by the gate: eval.json either way
    assert "eval-runs/cand/eval.json" in _keys(s3, "eval-runs/cand/")
    ev = json.loads(_get(s3, "eval-runs/cand/eval.json"))
    assert ev["candidate"]["run"] == f"s3://{BUCKET}/eval-runs/cand"
    assert ev["candidate"]["artifact_digest"] and ev["metrics"]["candidate"]["golden"]["loss"] > 0
    local = Path(out.strip().splitlines()[-1])
    assert local.is_relative_to(tmp_path / "cache") and json.loads(local.read_text())["data"] == ev["data"]
    # a prefix without a run is one line naming the key
    assert main([*args[:3], f"candidate={_uri(s3, 'eval-runs/nothing')}", *args[4:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "candidate: s3://" in err and "no report.json" in err
    _no_s3_folder(tmp_path)


SWEEP = """
sweep: {{dir: '{uri}', name: sw, search: random, num_samples: 2, trial_memory_gb: 0.5}}
scheduler: {{kind: none}}
base:
  recipe: {repo}/configs/tiny.yaml
  overrides:
    data: {{path: {samples}}}
    train: {{max_steps: 4, eval_every: 2, log_every: 1, checkpoint_every: 2, warmup_steps: 0}}
    scaling: {{num_workers: 1, cpus_per_worker: 0.5}}
    generate: {{prompt: ""}}
space:
  train.lr: {{choice: [0.003, 0.001]}}
"""


@pytest.mark.timeout(900)
def test_sweep_dir_on_s3(s3, ray_session, tmp_path, monkeypatch, capsys):
    """Tune's experiment (storage_path + storage_filesystem), each trial's run (through run.dir=s3://,
    as `rayft train` does it) and the sweep's summary files are in the bucket; a rerun from an
    empty cache restores the experiment from the bucket and reruns nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "cache-a"))
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(SWEEP.format(uri=_uri(s3, "sweeps"), repo=REPO, samples=SAMPLES))
    assert main(["sweep", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    best = out.strip().splitlines()[-1]
    assert best.startswith(f"s3://{BUCKET}/sweeps/sw/trials/") and "endpoint_override=" in best, out
    keys = _keys(s3, "sweeps/sw/")
    for k in ("sweep.json", "sweep.yaml", "results.csv", "results.json", "best.json", "best_config.yaml", "sweep.png"):
        assert f"sweeps/sw/{k}" in keys, k
    assert any(k.startswith("sweeps/sw/tune/experiment_state") for k in keys), keys
    res = json.loads(_get(s3, "sweeps/sw/results.json"))
    assert len(res["trials"]) == 2 and res["sweep_dir"] == f"s3://{BUCKET}/sweeps/sw"
    for t in res["trials"]:
        assert t["status"] == "finished" and t["steps"] == 4, t
        p = f"sweeps/sw/trials/{t['trial_id']}/"
        for k in ("report.json", "metrics.jsonl", "adapter/adapter_model.safetensors", "checkpoints/step_0000004/state.json"):
            assert p + k in keys, p + k
        assert t["run_dir"].startswith(f"s3://{BUCKET}/{p[:-1]}?") and t["checkpoint"].endswith("/checkpoints/step_0000004")
    bj = json.loads(_get(s3, "sweeps/sw/best.json"))
    assert bj["run_dir"] == best and bj["eval_command"].endswith(f"candidate={best}")
    assert "rayft-test-secret" not in out + err + json.dumps(res)

    # rerun on "another machine": the experiment is restored from the bucket, no trial reruns
    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "cache-b"))
    before = {o["Key"]: o["ETag"] for o in s3[1].list_objects_v2(Bucket=BUCKET, Prefix="sweeps/sw/trials/")["Contents"]}
    assert main(["sweep", "--config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    assert "resuming (Tuner.restore)" in err and out.strip().splitlines()[-1] == best
    after = {o["Key"]: o["ETag"] for o in s3[1].list_objects_v2(Bucket=BUCKET, Prefix="sweeps/sw/trials/")["Contents"]}
    assert {k: v for k, v in after.items() if "/checkpoints/" in k or k.endswith(".safetensors")} == \
        {k: v for k, v in before.items() if "/checkpoints/" in k or k.endswith(".safetensors")}
    _no_s3_folder(tmp_path)


def test_curate_bucket_lock(s3, tmp_path, monkeypatch, capsys):
    """One curate run per output prefix across machines: _ledger/lock.json is created only if
    absent (conditional PUT) and deleted at the end; a live holder (or one on another host) is
    one line; a lock left by a killed run on this host is taken over. No Ray starts here."""
    import socket

    from rayft.curate import remote
    from rayft.data.formats import DataError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYFT_CACHE", str(tmp_path / "cache"))
    uri = _uri(s3, "cur-lock")
    with remote.bucket_lock(uri):
        held = json.loads(_get(s3, "cur-lock/_ledger/lock.json"))
        assert held["host"] == socket.gethostname()
        with pytest.raises(DataError, match=r"another curate run holds s3://rayft-test/cur-lock/_ledger/lock.json"):
            with remote.bucket_lock(uri):
                pass
    assert [k for k in _keys(s3, "cur-lock/") if not k.endswith("/")] == []  # (pyarrow leaves dir markers)
    # killed on this host (pid gone): taken over, then released
    s3[1].put_object(Bucket=BUCKET, Key="cur-lock/_ledger/lock.json",
                     Body=json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345}).encode())
    with remote.bucket_lock(uri):
        assert json.loads(_get(s3, "cur-lock/_ledger/lock.json"))["pid"] != 2**22 + 12345
    assert [k for k in _keys(s3, "cur-lock/") if not k.endswith("/")] == []  # (pyarrow leaves dir markers)
    # held on another machine: the CLI refuses in one line before reading anything
    s3[1].put_object(Bucket=BUCKET, Key="cur-lock/_ledger/lock.json",
                     Body=json.dumps({"host": "elsewhere", "pid": 1, "since": "then"}).encode())
    assert main(["curate", "--config", str(REPO / "configs/curate.yaml"), f"input={SAMPLES}", f"output={uri}"]) != 0
    err = capsys.readouterr().err
    assert "host elsewhere" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [k for k in _keys(s3, "cur-lock/") if not k.endswith("/")] == ["cur-lock/_ledger/lock.json"]
    _no_s3_folder(tmp_path)
