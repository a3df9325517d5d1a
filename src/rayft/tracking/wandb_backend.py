"""Weights & Biases adapter: ``wandb.init`` with ``dir=<run dir>``; offline by default (the
run is written under ``<run dir>/wandb/`` and nothing is sent; ``wandb sync`` uploads it).
W&B's console capture and its own messages are off: the console stays rayft's."""
from __future__ import annotations

from pathlib import Path
from typing import Any


class WandbBackend:
    name = "wandb"

    def __init__(self, sec: Any, run_dir: Path, run_name: str, tags: dict[str, str], prev: dict | None,
                 group: str | None = None):
        import wandb

        self.run_dir = Path(run_dir).resolve()
        self.mode = sec.mode
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True)
        self.run = wandb.init(
            project=sec.project, entity=sec.entity or None, name=run_name, dir=str(self.run_dir),
            mode=sec.mode, id=(prev or {}).get("id") or None, resume="allow" if prev else None,
            tags=[f"{k}={v}"[:64] for k, v in tags.items() if k == "rayft.stage"],
            notes=tags.get("rayft.run_dir", ""), group=group, settings=settings, reinit="create_new")
        # rayft's step is the x axis; a rollback or resume may log a step again (W&B's own
        # step counter must only grow, so it is not used)
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def where(self) -> str:
        return f"wandb {self.mode} {self.run.dir if self.mode == 'offline' else self.run.url}"

    def params(self, flat: dict[str, str], nested: dict) -> None:
        self.run.config.update(nested, allow_val_change=True)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(dict(values, step=step))

    def event(self, tag: str, text: str, step: int) -> None:
        self.run.log({f"{tag}/message": text, "step": step})

    def artifact(self, path: Path) -> None:
        # a copy inside the W&B run's files (uploaded by `wandb sync` / live when online); saving
        # a path outside it would symlink it (and W&B warns about that on the console)
        import shutil

        dst = Path(self.run.dir) / path.name
        shutil.copyfile(path, dst)
        self.run.save(str(dst), base_path=str(self.run.dir), policy="now")

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)

    def state(self) -> dict:
        return {"id": self.run.id, "mode": self.mode, "dir": str(self.run.dir)}
