"""Training curves from `metrics.jsonl`: `run.output_dir/training.png`, drawn at the end of every training run."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402

# (title, metrics.jsonl names drawn in the panel); a panel whose names a run never logged is left out.
PANELS = (
    ("total reward", ("reward/total",)),
    ("accuracy (sampled)", ("reward/accuracy",)),
    ("format reward", ("reward/format",)),
    ("groups (dynamic sampling)", ("groups_kept", "groups_dropped")),
    ("seconds per phase", ("time/rollout_s", "time/data_s", "time/reward_s", "time/train_s", "time/weight_sync_s", "time/idle_s")),
    ("loss", ("loss",)),
)


def read_steps(metrics_jsonl: Path) -> dict[int, dict]:
    """step -> its record; after a resume the last record of a step wins."""
    by_step = {}
    for line in Path(metrics_jsonl).read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return by_step


def plot_training(metrics_jsonl: Path, out_png: Path) -> Path:
    """One panel per logged figure (or group of figures) against the optimizer step."""
    by_step = read_steps(metrics_jsonl)
    steps = sorted(by_step)
    panels = [(title, keys) for title, keys in PANELS if any(k in r for r in by_step.values() for k in keys)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            ax.plot(steps, [by_step[s].get(key, float("nan")) for s in steps], marker=".", label=key.removeprefix("time/"))
        if len(keys) > 1:
            ax.legend(fontsize="small")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return save_figure(fig, out_png)


def save_figure(fig, out_png: Path) -> Path:
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
