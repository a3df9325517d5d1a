"""Issue 17 item 1 (no planted secret survives anywhere in curate's output, logs or reports,
whatever invisible/full-width characters hide it), item 11 (shards, rejects and ledger are
fsynced before the ledger commit) and item 13 (a corrupt ledger.json is a one-line error)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from rayft.curate import output
from rayft.curate.config import CurateConfig
from rayft.curate.filters import process_task, redact_record
from rayft.curate.ledger import Ledger
from rayft.curate.secrets import find_secrets
from rayft.data.reader import plan_file

ZW = "\u200b"


def _fw(s: str) -> str:
    """Full-width forms of ASCII letters/digits/punctuation."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


# (text planted in a pair, the secret value that must never appear in the output)
PLANTED = [
    (f"my pass{ZW}word: hunter22x", "hunter22x"),
    (_fw("password: tiger2024q"), "tiger2024q"),
    (f"pass\u2060word = Zz9{ZW}plover", "Zz9plover"),
    (_fw("pwd=qwerty777"), "qwerty777"),
    (f"密{ZW}码：Abc12345xyz", "Abc12345xyz"),
    ("card " + _fw("4111 1111 1111 1111") + " ok", "4111111111111111"),
    (f"card 5500{ZW}0000{ZW}0000{ZW}0004 ok", "5500000000000004"),
    (f"id {_fw('11010519491231002X')}", "11010519491231002X"),
    (f"key sk-proj-{ZW}AbCdEfGhIjKlMnOpQrStUvWx1234", "AbCdEfGhIjKlMnOpQrStUvWx1234"),
    (_fw("ghp_") + "a1B2c3D4e5" * 4, "a1B2c3D4e5" * 4),
    (f"mail bob{ZW}.smith@exam\u2060ple.org please", "bob.smith@example.org"),
    ("call " + _fw("13812345678") + " now", "13812345678"),
]


def _pairs(path: Path) -> list[str]:
    rows = []
    for k, (text, _) in enumerate(PLANTED):
        # secret in the prompt, the response, a system prompt and a wrongly typed field
        rows.append({"prompt": f"question {k}: {text}", "response": f"a long enough answer number {k} here"})
        rows.append({"prompt": f"another question {k}", "response": f"sure, {text}, noted"})
        rows.append({"system": text, "prompt": f"third question {k}", "response": f"answer {k} is fine"})
        rows.append({"prompt": f"bad row {k}", "response": [text]})  # read error: wrong type
    lines = [json.dumps(r, ensure_ascii=k % 2 == 0) for k, r in enumerate(rows)]
    lines.append('{"prompt": "torn ' + PLANTED[0][0] + '", "response": ')  # unparseable line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [v for _, v in PLANTED]


def _texts(root: Path) -> dict[str, str]:
    """Every file under ``root`` as text a reader would see: Parquet/Arrow decoded to rows,
    JSON decoded (so \\uXXXX escapes cannot hide a value), anything else as UTF-8."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            txt = json.dumps(pq.read_table(p).to_pylist(), ensure_ascii=False, default=str)
        elif p.suffix == ".arrow":
            txt = json.dumps(feather.read_table(p).drop_columns(
                [c for c in ("sig", "emb") if c in feather.read_table(p).column_names]).to_pylist(),
                ensure_ascii=False, default=str)
        else:
            txt = p.read_bytes().decode("utf-8", "replace")
            parts = []
            for line in txt.splitlines():
                try:
                    parts.append(json.dumps(json.loads(line), ensure_ascii=False))
                except ValueError:
                    parts.append(line)
            try:
                parts.append(json.dumps(json.loads(txt), ensure_ascii=False))
            except ValueError:
                pass
            txt = txt + "\n" + "\n".join(parts)
        out[str(p)] = txt
    return out


def _view(text: str) -> str:
    """What a reader recovers from obfuscated text: NFKC, invisible/format characters removed."""
    return "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) not in ("Cf", "Cc")
                   or c in "\n\t")


def _leaks(texts: dict[str, str], values: list[str]) -> list[tuple[str, str]]:
    found = []
    for where, txt in texts.items():
        view = _view(txt)
        squeezed = re.sub(r"[\s\-]", "", view)
        for v in values:
            if v in txt or v in view or (v.isdigit() and v in squeezed):
                found.append((where, v))
    return found


def test_planted_values_are_detected_and_redaction_sees_the_same_view():
    for text, value in PLANTED:
        assert find_secrets(_view(text)), text
        red = json.dumps(redact_record({"k": [text]}, CurateConfig().secrets), ensure_ascii=False)
        assert not _leaks({"x": red}, [value]), (text, red)


def test_no_planted_secret_anywhere_in_the_output_tree(tmp_path):
    """The curate write path without Ray: read+filter every task, then write splits, rejects,
    accepted ledger rows and the report, publish and commit; walk every file."""
    data = tmp_path / "pairs.jsonl"
    values = _pairs(data)
    cfg = CurateConfig()
    cfg.data.path, cfg.output.dir = str(data), str(tmp_path / "out")
    cfg.language.keep = []
    table = pa.concat_tables([process_task(t, cfg) for t in plan_file(str(data), "auto")])
    from rayft.curate import assemble
    w = assemble.Working.of(table)
    assemble.assign_splits(w, cfg)
    final = w.finish()
    led = Ledger(tmp_path / "out")
    stage = led.staging("r0001")
    splits = output.write_splits(final, stage, "r0001", 1000)
    output.write_rejects(final, stage, "r0001", cfg)
    kept = final.filter(assemble.kept_mask(final))
    from rayft.curate.ledger import write_accepted
    write_accepted(stage / "_ledger" / "accepted-r0001.arrow",
                   pa.table({"hash": kept["_hash"], "file": kept["file"], "line": kept["line"],
                             "dtext": kept["_dtext"], "sig": kept["_sig"], "split": kept["_split"]}))
    report = output.build_report(final, cfg, "r0001", files={}, skipped=[], splits=splits, timing={})
    output.write_report(stage, "r0001", report)
    led.publish("r0001")
    led.commit("r0001", {}, {"rows_in": report["rows_in"]})
    assert report["rows_in"] == len(PLANTED) * 4 + 1 == report["rows_kept"] + report["rows_rejected"]
    assert report["filters"]["secrets"]["removed"] > 0 and report["filters"]["read"]["removed"] == len(PLANTED) + 1
    texts = _texts(tmp_path / "out")
    assert any("rejects" in k for k in texts) and any(k.endswith(".parquet") for k in texts)
    assert _leaks(texts, values) == []


@pytest.mark.ray
def test_cli_curate_output_and_logs_hold_no_planted_secret(tmp_path):
    """`rayft curate` end to end (Ray Data): every file of the output tree and everything the
    command printed is free of the planted values."""
    data = tmp_path / "in" / "pairs.jsonl"
    data.parent.mkdir()
    values = _pairs(data)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "rayft.cli", "curate", f"input={data}", f"output={out}",
                        "language.keep=[]", "ray.num_cpus=1"], capture_output=True, text=True, timeout=600,
                       cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    texts = _texts(out)
    texts["stdout"], texts["stderr"] = r.stdout, r.stderr
    assert json.loads((out / "report.json").read_text())["filters"]["secrets"]["removed"] > 0
    assert _leaks(texts, values) == []


def test_publish_fsyncs_outputs_and_dirs_before_the_ledger_commit(tmp_path, monkeypatch):
    led = Ledger(tmp_path / "out")
    stage = led.staging("r0001")
    for rel in ("en/train/part-r0001-00000.parquet", "rejects/r0001.secrets.jsonl", "_ledger/accepted-r0001.arrow",
                "report.json"):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_bytes(b"x")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    led.publish("r0001")
    led.commit("r0001", {}, {})
    out = tmp_path / "out"
    commit = events.index(("replace", str(out / "_ledger" / "ledger.json")))
    before = {p for kind, p in events[:commit] if kind == "fsync"}
    for rel in ("en/train/part-r0001-00000.parquet", "rejects/r0001.secrets.jsonl", "_ledger/accepted-r0001.arrow",
                "report.json"):
        assert str(stage / rel) in before, rel  # file contents durable before the rename
        assert str((out / rel).parent) in before, rel  # the rename durable before the commit
    assert str(out / "en") in before and str(out) in before
    assert ("fsync", str(out / "_ledger")) in events[commit:]  # the commit rename itself


@pytest.mark.parametrize("content", ["{not json", '{"runs": "r0001"}', '{"runs": [{"run": "../x"}], "files": {}}',
                                     "\xff\xfe"])
def test_cli_corrupt_ledger_is_one_line_error(tmp_path, content):
    out = tmp_path / "out"
    (out / "_ledger").mkdir(parents=True)
    (out / "_ledger" / "ledger.json").write_bytes(content.encode("latin-1"))
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q", "response": "a fine answer"}\n')
    r = subprocess.run([sys.executable, "-m", "rayft.cli", "curate", f"input={data}", f"output={out}"],
                       capture_output=True, text=True, timeout=300)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "ledger.json: corrupt ledger" in lines[0]
