"""loss.png: train and validation loss against step."""
from __future__ import annotations

from pathlib import Path


def plot_loss(metrics: list[dict], out: Path, title: str = "") -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(m["step"], m["loss"]) for m in metrics if m.get("loss") is not None]
    va = [(m["step"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
    if not tr and not va:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if tr:
        ax.plot(*zip(*tr), label="train loss", color="tab:blue", marker=".", markersize=3)
    if va:
        ax.plot(*zip(*va), label="val loss", color="tab:orange", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean token cross-entropy)")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
