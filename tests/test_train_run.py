"""End to end on the session Ray: a real LoRA fine-tune (tiny Qwen2, 2 Ray Train workers),
its report contract, exact resume, worker-failure recovery, reload and export."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from rayft.cli import main
from rayft.config import load
from rayft.train.config import TrainConfig
from rayft.train.launch import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"


def cfg(run_dir: Path, name: str, *overrides: str, data: Path = SAMPLES) -> TrainConfig:
    return load(TrainConfig, REPO / "configs/tiny.yaml",
                [f"run.dir={run_dir}", f"run.name={name}", f"data.path={data}", "generate.prompt=", *overrides])


@pytest.fixture(scope="module")
def data_with_bad_rows(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pairs")
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()
    bad = ['{"original_subtitles": [{"start": 0, "end": 1, "text": "x"}]', '{"prompt": "no response"}',
           '{"original_subtitles": [], "viral_subtitles": [{"start": 0, "end": 1, "text": "y"}]}']
    (d / "pairs.jsonl").write_text("\n".join(lines[:100] + bad + lines[100:]) + "\n", encoding="utf-8")
    return d / "pairs.jsonl"


@pytest.fixture(scope="module")
def straight(ray_session, tmp_path_factory, data_with_bad_rows):
    """20 steps in one go, through the CLI exactly as a user runs it."""
    runs = tmp_path_factory.mktemp("runs")
    import io
    from contextlib import redirect_stdout
    from rayft.testing.prometheus import Scraper
    buf = io.StringIO()
    with redirect_stdout(buf), Scraper("ray_rayft_train_") as scraped:  # the Ray dashboard metrics, live
        rc = main(["train", "--config", str(REPO / "configs/tiny.yaml"), f"run.dir={runs}", "run.name=straight",
                   f"data.path={data_with_bad_rows}", "generate.max_new_tokens=8"])
        scraped.wait_for(lambda sc: all(sc.series("ray_rayft_train_step", run="straight", rank=r)[-1:] == [20.0]
                                        for r in "01"), timeout_s=30)
    SCRAPED["straight"] = scraped
    assert rc == 0
    return runs / "straight", buf.getvalue()


SCRAPED = {}  # run name -> the Scraper that read the nodes' Prometheus endpoints during it


def test_report_contract(straight, data_with_bad_rows):
    run_dir, out = straight
    assert out.strip().splitlines()[-1] == str(run_dir)  # last line printed = the run directory
    rep = json.loads((run_dir / "report.json").read_text())
    for k in ("rows_read", "rows_rejected", "loss_first", "loss_last", "val_loss", "tokens_per_s",
              "peak_rss_mb", "wall_s", "train_rows", "val_rows", "steps", "config"):
        assert k in rep, k
    assert rep["rows_read"] == 203 and rep["rows_rejected"] == 3
    assert rep["rows_read"] == rep["rows_kept"] + rep["rows_rejected"]
    assert rep["train_rows"] + rep["val_rows"] == rep["rows_kept"]
    assert rep["steps"] == 20 and rep["finished"]
    assert rep["loss_last"] < rep["loss_first"]  # it learned
    assert rep["val_loss"] < rep["val_loss_start"]
    assert len(rep["peak_rss_mb"]) == 2 and all(200 < x < 4000 for x in rep["peak_rss_mb"])
    assert rep["tokens_per_s"] > 0 and rep["sample"]["answer"] is not None
    rejects = [json.loads(x) for x in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [101, 102, 103]
    assert all(r["file"] == str(data_with_bad_rows) and r["reason"] and "record" in r for r in rejects)
    # format is detected per file (subtitle here), so a prompt-only row is judged as a subtitle pair
    assert "malformed JSON" in rejects[0]["reason"]
    assert all("original_subtitles" in r["reason"] for r in rejects[1:])
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [m["step"] for m in metrics if "loss" in m]
    assert logged == [1, 5, 10, 15, 20]
    assert all({"loss", "lr", "tokens_per_s", "peak_rss_mb"} <= set(m) for m in metrics if "loss" in m)
    # warmup then cosine decay
    lrs = {m["step"]: m["lr"] for m in metrics if "lr" in m}
    # transformers' schedule: the lr after step 1 is half way up the 2 warmup steps (step 1 itself ran
    # at 0), then cosine decay from train.lr=0.003 to 0.1 x that at step 20
    assert lrs[1] == pytest.approx(0.003 / 2) and lrs[20] == pytest.approx(0.0003)
    assert lrs[20] < lrs[10] < lrs[5] and lrs[5] > lrs[1]
    assert (run_dir / "loss.png").stat().st_size > 5000
    for f in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json"):
        assert (run_dir / f).exists(), f
    ck = sorted((run_dir / "checkpoints").glob("step_*"))
    assert [c.name for c in ck] == ["step_0000010", "step_0000020"]
    state = json.loads((ck[-1] / "state.json").read_text())
    assert state["step"] == 20 and state["scheduler"] and state["optimizer"]["param_groups"]
    assert {"optimizer.safetensors", "rng_rank0.safetensors", "rng_rank1.safetensors"} <= {p.name for p in ck[-1].iterdir()}


def test_ray_dashboard_metrics(straight):
    """Every worker's step, loss, tokens/s and RSS reach the node's Prometheus endpoint (Ray's
    metrics agent runs with include_dashboard=False too), tagged with the run name and rank."""
    sc = SCRAPED["straight"]
    assert sc.urls and sc.scrapes > 0, sc.errors[:3]
    for rank in "01":
        s = {n: sc.series(f"ray_rayft_train_{n}", run="straight", rank=rank)
             for n in ("step", "max_steps", "loss", "tokens_per_s", "rss_bytes", "peak_rss_bytes", "steps_total")}
        assert s["step"] and s["step"][-1] == 20.0, (rank, s["step"])  # the last logged step = max_steps
        assert s["step"] == sorted(s["step"]) and set(s["step"]) <= {1.0, 5.0, 10.0, 15.0, 20.0}
        assert s["max_steps"] == [20.0] and s["steps_total"][-1] == 20.0
        assert all(0 < v < 20 for v in s["loss"]) and all(v > 0 for v in s["tokens_per_s"]), s
        assert all(100e6 < v < 4e9 for v in s["rss_bytes"] + s["peak_rss_bytes"]), s
    rep = json.loads((straight[0] / "report.json").read_text())  # loss: the run's, the same on every rank
    assert sc.series("ray_rayft_train_loss", run="straight", rank="0")[-1] == pytest.approx(rep["loss_last"])


def _chromium() -> str | None:
    import shutil
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_html_renders_in_chromium(straight, tmp_path):
    """report.html of the run, screenshotted by headless Chromium: the page, its loss curve (SVG)
    and the validation dots are drawn, not a blank or error page."""
    import subprocess

    import numpy as np
    from PIL import Image

    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium): report.html not screenshotted")
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")

    def shot(page: Path) -> np.ndarray:
        png = tmp_path / (page.stem + ".png")
        res = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
                              "--window-size=1200,1600", page.as_uri()], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and png.exists(), res.stderr[-2000:]
        img = Image.open(png).convert("RGB")
        assert img.size == (1200, 1600)
        return np.asarray(img).astype(int)

    page, empty = shot(straight[0] / "report.html"), shot(blank)
    assert len(np.unique(empty.reshape(-1, 3), axis=0)) == 1  # the blank page is one colour
    assert len(np.unique(page.reshape(-1, 3), axis=0)) > 50   # text, lines, antialiasing
    changed = np.abs(page - empty).sum(axis=2) > 30
    assert changed.mean() > 0.01, changed.mean()
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows[-1] - rows[0] > 1000  # content from top to bottom, not one error line

    def near(rgb) -> int:
        return int((np.abs(page - np.array(rgb)).sum(axis=2) < 40).sum())
    assert near((0x2e, 0x86, 0xde)) > 300  # the train loss polyline (#2e86de)
    assert near((0xe6, 0x7e, 0x22)) > 20   # the validation loss dots (#e67e22)


def test_adapter_reloads_and_export_generates(straight, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayft.models.load import load_model, load_tokenizer
    from rayft.train.export import ExportConfig, run_export

    run_dir, _ = straight
    tok = load_tokenizer(str(run_dir / "tokenizer"))
    peft_model = PeftModel.from_pretrained(load_model("tiny-qwen2", tok), str(run_dir / "adapter")).eval()
    out = Path(run_export(ExportConfig(run=str(run_dir), output=str(tmp_path / "merged"))))
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True).eval()
    tok2 = AutoTokenizer.from_pretrained(str(out))
    ids = tok2("The detective opens the letter. 侦探打开了信。", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = peft_model(input_ids=ids).logits, merged(input_ids=ids).logits
        base = load_model("tiny-qwen2", tok)(input_ids=ids).logits
        gen = merged.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert torch.allclose(a, b, atol=1e-4)  # merged model == base + adapter
    assert not torch.allclose(a, base, atol=1e-4)  # and the adapter changed something
    assert gen.shape[1] == ids.shape[1] + 5


def _kill_rank1_after_checkpoint(run_dir: Path, step: int, killed: dict) -> threading.Thread:
    """SIGKILL the rank-1 worker once the controller has registered checkpoint ``step`` (a
    reported but not yet registered checkpoint is not restored by Ray Train: it would restart
    from the previous one)."""
    def killer():
        deadline = time.time() + 400
        while time.time() < deadline:
            snap = run_dir / "checkpoints" / "checkpoint_manager_snapshot.json"
            try:
                names = [c["checkpoint_dir_name"] for c in json.loads(snap.read_text())["checkpoint_results"]]
            except (OSError, ValueError, KeyError):
                names = []
            if f"step_{step:07d}" in names:
                pid = int((run_dir / "workers/rank1.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    return t


def test_resume_and_worker_kill_continue_the_same_loss_curve_with_chunked_loss(straight, tmp_path, data_with_bad_rows):
    """Two launches of the straight run's recipe (max_steps 20) cover three behaviours (two
    TorchTrainer.fit instead of four):

    * stop and resume: the first launch stops (checkpointed) after 5 steps, a rerun of the same
      command resumes from step 5 and finishes;
    * worker failure: during the rerun rank 1 is SIGKILLed after checkpoint 6 is registered;
      Ray Train restarts the group from a checkpoint (not from zero, a new worker process);
    * train.loss_chunk=64 (no batch x seq x vocab logits) under Ray Train DDP, in both launches;

    and the loss curve is the straight run's (full logits, no stop, no kill) at every logged step:
    1e-3 at step 1 (the chunked loss is a different summation order; measured ~1e-6) and 1e-4 at
    steps 5-20 and the final val loss, i.e. across the resume and the recovery."""
    run_dir = tmp_path / "resumed"
    first = run_training(cfg(tmp_path, "resumed", "train.loss_chunk=64", "train.stop_after_steps=5",
                             data=data_with_bad_rows))
    rep1 = json.loads((Path(first) / "report.json").read_text())
    assert rep1["steps"] == 5 and not rep1["finished"] and rep1["config"]["train"]["loss_chunk"] == 64
    killed = {}
    t = _kill_rank1_after_checkpoint(run_dir, 6, killed)
    second = run_training(cfg(tmp_path, "resumed", "train.loss_chunk=64", "train.checkpoint_every=2",
                              "scaling.max_failures=2", data=data_with_bad_rows))
    t.join(timeout=1)
    assert killed, "the worker was never killed (checkpoint 6 was never registered)"
    rep2 = json.loads((Path(second) / "report.json").read_text())
    assert rep2["resumed_from_step"] == 5 and rep2["steps"] == 20 and rep2["finished"]
    assert rep2["config"]["train"]["loss_chunk"] == 64
    assert int((run_dir / "workers/rank1.pid").read_text()) != killed["pid"]  # a new worker
    ref = {m["step"]: m for m in map(json.loads, (straight[0] / "metrics.jsonl").read_text().splitlines())}
    got = {m["step"]: m for m in map(json.loads, (Path(second) / "metrics.jsonl").read_text().splitlines())}
    # every step logged once: the straight run's log steps + the rerun's checkpoint steps (every 2)
    assert sorted(got) == sorted(set(ref) | set(range(6, 20, 2)))
    assert got[6]["resumed_from"] == 5  # the rerun continued from the first launch's checkpoint ...
    assert (got[20].get("resumed_from") or 0) >= 6, got[20]  # ... the recovery from a later one, not from zero
    assert abs(got[1]["loss"] - ref[1]["loss"]) < 1e-3, (got[1]["loss"], ref[1]["loss"])
    for step in (5, 10, 15, 20):
        assert abs(got[step]["loss"] - ref[step]["loss"]) < 1e-4, (step, got[step]["loss"], ref[step]["loss"])
    assert abs(got[20]["val_loss"] - ref[20]["val_loss"]) < 1e-4


def test_bad_input_fails_before_ray_with_one_message(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{nope\n")
    cases = [
        ([f"data.path={tmp_path / 'missing.jsonl'}"], "file not found"),
        ([f"data.path={bad}"], "no valid rows; first problem at line 1: malformed JSON"),
        ([f"data.path={SAMPLES}", "data.format=csv"], "data.format: expected one of ['auto', 'subtitle'"),
        ([f"data.path={SAMPLES}", "train.bogus=1"], "unknown config key 'train.bogus'"),
        ([f"data.path={SAMPLES}", "train.max_steps=ten"], "train.max_steps: expected an integer"),
        ([f"data.path={SAMPLES}", "model.name=no-such-model"], "model.name"),
    ]
    for overrides, msg in cases:
        rc = main(["train", "--config", str(REPO / "configs/tiny.yaml"), f"run.dir={tmp_path}", *overrides])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "Traceback" not in err, (overrides, err)
    assert not (tmp_path / "tiny").exists()  # nothing started


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "train" in top and "curate" in top
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    h = capsys.readouterr().out
    for key in ("data.path", "data.format", "model.name", "run.dir", "train.max_steps", "scaling.num_workers",
                "scaling.cpus_per_worker", "lora.r", "train.grad_accum", "train.checkpoint_every"):
        assert key in h, key


def test_no_validation_split_trains(ray_session, tmp_path):
    """data.val_fraction=0 (no validation rows) is a valid setting: before, every worker died with
    Ray Train v2's KeyError "Dataset shard for 'val' not found" (its get_dataset_shard raises for a
    dataset the trainer was not given, where v1 returned None)."""
    out = Path(run_training(cfg(tmp_path, "noval", "data.val_fraction=0", "train.max_steps=2",
                                "scaling.num_workers=1")))
    rep = json.loads((out / "report.json").read_text())
    assert rep["finished"] and rep["steps"] == 2 and rep["val_loss"] is None
    assert (out / "adapter" / "adapter_model.safetensors").exists()
