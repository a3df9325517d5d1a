"""report.html (issue 21 item 5): one self-contained page from a run's report.json, metrics.jsonl
and memory.json, written atomically beside report.json; parsed back with html.parser (no Ray)."""
from __future__ import annotations

import json
from html.parser import HTMLParser

from rayft.train.report_html import write_report_html


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_has_every_section(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": 0, "val_loss": 2.5}] + [{"step": s, "loss": 3.0 / s, "lr": 1e-3, "tokens_per_s": 90.0}
                                             for s in range(1, 6)] + [{"step": 5, "val_loss": 1.1}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "memory.json").write_text(json.dumps({"budget_gb": 4.0}))
    (run / "report.json").write_text(json.dumps({
        "run_dir": str(run), "steps": 5, "max_steps": 5, "finished": True, "loss_first": 3.0, "loss_last": 0.6,
        "val_loss_start": 2.5, "val_loss": 1.1, "tokens_per_s": 90.0, "wall_s": 12.0, "rows_read": 200,
        "rows_rejected": 3, "rows_kept": 197, "train_rows": 180, "val_rows": 17, "peak_rss_mb": [1100.0, 1150.0],
        "guard": {"rollbacks": 1, "lr_scale": 0.5, "events": [{"event": "nonfinite_rollback", "step": 3,
                                                               "message": "NaN <loss> at step 3"}]},
        "sample": {"prompt": "Rewrite: <b>hi</b>", "answer": "HI & bye"},
        "config": {"model": {"name": "tiny-qwen2"}, "alerts": {"api_key": "sk-secret-1"}},
        "command": "rayft train x"}))
    out = write_report_html(run)
    assert out == run / "report.html" and not list(run.glob("*.tmp*"))
    page = out.read_text()
    p = _Text()
    p.feed(page)
    text = " ".join(p.text)
    for heading in ("Loss", "Data", "Memory per worker", "Guard", "Sample answer", "Config"):
        assert heading in text, heading
    assert "svg" in p.tags and "polyline" in p.tags and p.tags.count("circle") == 2  # 5 train points, 2 val
    assert "1150 MB peak RSS" in text and "NaN <loss> at step 3" in text and "Rewrite: <b>hi</b>" in text
    assert "<b>hi</b>" not in page and "sk-secret-1" not in page  # escaped; secrets masked
    assert "3.0000" in text and "0.6000" in text and "180" in text
