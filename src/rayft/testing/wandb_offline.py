"""Read an offline W&B run back, for tests: wandb 0.19+ has no Python reader for its run files
(the Go core writes them), so this parses the documented container: a ':W&B' header, then
LevelDB-log blocks of 32 KiB whose record chunks (7-byte header: crc32, length, type) hold
``wandb.proto.wandb_internal_pb2.Record`` messages."""
from __future__ import annotations

import json
from pathlib import Path

BLOCK = 32768


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk   # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def history(path: str | Path) -> list[dict]:
    """Every logged row ({key: value}) of the run, in order."""
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records(path) if r.WhichOneof("record_type") == "history"]


def config_keys(path: str | Path) -> set[str]:
    return {i.key for r in records(path) if r.WhichOneof("record_type") == "config" for i in r.config.update}
