"""TensorBoard adapter: event files under ``<run dir>/tb/`` (``tensorboard --logdir runs``),
written with torch's ``SummaryWriter``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=10)
        self.last_step = 0

    def where(self) -> str:
        return f"tensorboard {self.log_dir}"

    def params(self, flat: dict[str, str], nested: dict) -> None:
        import yaml

        text = yaml.safe_dump(nested, sort_keys=False, allow_unicode=True)
        self.writer.add_text("config", "```\n" + text + "\n```", 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.last_step = max(self.last_step, step)

    def event(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def artifact(self, path: Path) -> None:
        if path.suffix == ".png":
            import matplotlib.image as mpimg

            img = mpimg.imread(str(path))
            self.writer.add_image(path.stem, img[..., :3], self.last_step, dataformats="HWC")
        elif path.suffix in (".json", ".yaml"):
            self.writer.add_text(path.stem, "```\n" + path.read_text()[:60000] + "\n```", self.last_step)

    def summary(self, values: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(values, indent=1, default=str) + "\n```",
                             self.last_step)

    def close(self, ok: bool) -> None:
        self.writer.flush()
        self.writer.close()

    def state(self) -> dict:
        return {"log_dir": str(self.log_dir)}
