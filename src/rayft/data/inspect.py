"""``rayft data inspect path=...``: what training would do with a dataset, before training.

Per file: the detected format, rows read / kept / rejected and the rejects grouped by
reason (with the first line of each). For the kept rows: token lengths with the chosen
model's tokenizer, rendered exactly as training renders them (chat template, tools,
``data.train_on`` masks), how many rows ``max_seq_len`` would truncate, and how many
would keep no loss token at all. Writes ``inspect.json`` and ``token_lengths.png`` (a
histogram with the ``max_seq_len`` line) into ``out``, atomically, and prints a summary
with the output directory last. Runs in this process (no Ray): reading uses the same
readers (``formats.read_pairs``) as ``rayft train``.
"""
from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from pydantic import ValidationInfo, model_validator

from ..config import ConfigError, LocalPath, Section, complete, from_dict, opt, to_dict
from .formats import FORMATS, check_format, read_pairs
from .tokenize import IGNORE, TRAIN_ON


class InspectConfig(Section):
    path: str = opt("", "pairs file, directory, glob, or a datasets save_to_disk folder (required)")
    format: Literal[("auto", *FORMATS)] = opt(  # type: ignore[valid-type]
        "auto", f"auto | {' | '.join(FORMATS)}")
    model: str = opt("tiny-qwen2", "model whose tokenizer counts the tokens (preset, hub id or local dir)")
    trust_remote_code: bool = opt(False, "allow the model repo to run its own tokenizer code")
    max_seq_len: int = opt(512, "the training max_seq_len: rows longer than this are reported as truncated", ge=8)
    train_on: Literal[TRAIN_ON] = opt(  # type: ignore[valid-type]
        "last", "last | all_assistant: which assistant turns carry loss (as data.train_on)")
    system_prompt: str = opt("", "system message added to rows without their own (as data.system_prompt)")
    limit: int = opt(0, "tokenize at most this many kept rows (0: all); counts and rejects always cover every row", ge=0)
    out: LocalPath = opt("runs/inspect", "directory for inspect.json and token_lengths.png")

    @model_validator(mode="after")
    def _required(self, info: ValidationInfo):
        if complete(info) and not self.path:
            raise ConfigError("path: required (a pairs file, directory, glob or datasets folder)")
        return self


_VARYING = [(re.compile(r"\[\d+\]"), "[i]"), (re.compile(r" at (column|byte) \d+"), ""),
            (re.compile(r"\(line \d+ column \d+ \(char \d+\)\)"), "")]


def reason_kind(reason: str) -> str:
    """A reject reason without its row-specific positions, so equal problems group."""
    for pat, rep in _VARYING:
        reason = pat.sub(rep, reason)
    return reason


def inspect_data(cfg: InspectConfig) -> dict:
    """The inspection as a dict (what inspect.json holds) plus ``lengths`` for the plot."""
    from ..models.load import ModelError, load_tokenizer, resolve_source
    from .tokenize import encode_row

    check_format(cfg.format)
    res = read_pairs(cfg.path, cfg.format, require_rows=False)
    by_file: dict[str, dict] = {}
    reasons: dict[str, Counter] = defaultdict(Counter)
    first_line: dict[tuple[str, str], int] = {}
    for r in res.rejects:
        k = reason_kind(r["reason"])
        reasons[r["file"]][k] += 1
        first_line.setdefault((r["file"], k), r["line"])
    for path, f in res.files.items():
        by_file[path] = dict(f, rejects_by_reason=[
            {"reason": k, "rows": n, "first_line": first_line[(path, k)]} for k, n in reasons[path].most_common()])
    try:
        tok = load_tokenizer(resolve_source(cfg.model), cfg.trust_remote_code)
    except ModelError as e:
        raise ConfigError(f"model: {e}") from None
    rows = res.rows[: cfg.limit] if cfg.limit else res.rows
    lengths, labelled, no_loss = [], [], 0
    for r in rows:
        ids, labels, _ = encode_row(tok, r["system"] or cfg.system_prompt, r["history"], r["prompt"], r["response"],
                                    1 << 30, r.get("messages") or "", r.get("tools") or "", cfg.train_on)
        lengths.append(len(ids))
        labelled.append(sum(1 for x in labels if x != IGNORE))
        if len(ids) > cfg.max_seq_len:
            _, cut, _ = encode_row(tok, r["system"] or cfg.system_prompt, r["history"], r["prompt"], r["response"],
                                   cfg.max_seq_len, r.get("messages") or "", r.get("tools") or "", cfg.train_on)
            no_loss += all(x == IGNORE for x in cut)
    truncated = sum(1 for n in lengths if n > cfg.max_seq_len)
    s = sorted(lengths)

    def pct(q: float) -> int:
        return s[min(len(s) - 1, int(q * len(s)))] if s else 0

    formats = Counter(f["format"] for f in res.files.values())
    kinds = Counter(r.get("format") for r in rows)
    return {
        "path": cfg.path, "model": cfg.model, "max_seq_len": cfg.max_seq_len, "train_on": cfg.train_on,
        "files": by_file, "formats": dict(formats),
        "rows_read": res.rows_read, "rows_kept": len(res.rows), "rows_rejected": len(res.rejects),
        "rows_tokenized": len(rows), "rows_by_format": dict(kinds),
        "rows_with_tools": sum(1 for r in rows if r.get("messages")),
        "tokens": {"min": s[0] if s else 0, "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                   "max": s[-1] if s else 0, "mean": round(sum(s) / len(s), 1) if s else 0,
                   "loss_tokens_mean": round(sum(labelled) / len(labelled), 1) if labelled else 0},
        "rows_truncated": truncated, "rows_truncated_no_loss_left": no_loss,
        "lengths": lengths,
    }


def plot_lengths(lengths: list[int], max_seq_len: int, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..storage import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    if lengths:
        ax.hist(lengths, bins=min(60, max(5, len(set(lengths)))), color="#4C72B0")
    ax.axvline(max_seq_len, color="#C44E52", linestyle="--", label=f"max_seq_len = {max_seq_len}")
    over = sum(1 for n in lengths if n > max_seq_len)
    ax.set_title(f"{title}: {len(lengths)} rows, {over} truncated")
    ax.set_xlabel("tokens per row (as training renders it)")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def run_inspect(cfg: InspectConfig) -> str:
    """The ``rayft data inspect`` stage: prints a summary, returns the output directory."""
    from ..storage import atomic_write_json

    cfg = from_dict(InspectConfig, to_dict(cfg))  # the whole check, the required path included
    rep = inspect_data(cfg)
    out = Path(os.path.expanduser(cfg.out))
    lengths = rep.pop("lengths")
    png = plot_lengths(lengths, cfg.max_seq_len, out / "token_lengths.png", Path(cfg.path).name or cfg.path)
    rep["histogram"] = str(png)
    atomic_write_json(out / "inspect.json", rep)
    for path, f in rep["files"].items():
        print(f"{path}: {f['format']}, {f['read']} rows read, {f['kept']} kept, {f['rejected']} rejected")
        for r in f["rejects_by_reason"][:8]:
            print(f"    {r['rows']:>6} x {r['reason']} (first at line {r['first_line']})")
    t = rep["tokens"]
    print(f"total: {rep['rows_read']} rows read = {rep['rows_kept']} kept + {rep['rows_rejected']} rejected; "
          f"{rep['rows_with_tools']} with tool calls")
    print(f"tokens ({cfg.model}, train_on={cfg.train_on}) over {rep['rows_tokenized']} rows: min {t['min']}, "
          f"p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}; loss tokens/row {t['loss_tokens_mean']}")
    print(f"max_seq_len={cfg.max_seq_len} truncates {rep['rows_truncated']} rows"
          + (f" ({rep['rows_truncated_no_loss_left']} of them keep no loss token)"
             if rep["rows_truncated_no_loss_left"] else ""))
    return str(out)
