"""Training curves a person can look at instead of reading metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("reward/total", "total reward"),
    ("reward/accuracy", "accuracy (sampled)"),
    ("reward/format", "format reward"),
    ("groups_dropped", "groups dropped by dynamic sampling"),
)


def plot_training(metrics_jsonl: Path, out_png: Path) -> Path:
    """One panel per metric against the optimizer step (the last record of a step wins after a resume)."""
    by_step = {}
    for line in Path(metrics_jsonl).read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    steps = sorted(by_step)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (key, title) in zip(axes, PANELS):
        ax.plot(steps, [by_step[s].get(key, float("nan")) for s in steps], marker=".")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
