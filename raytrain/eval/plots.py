"""Pictures of evaluations a person can look at instead of reading JSON: comparisons of runs by group,
confusion matrices. Training curves are `raytrain.observe.curves`."""

from __future__ import annotations

from pathlib import Path

from raytrain.observe.curves import plt, save_figure  # curves picks the file-only backend first


def plot_rate_by_group(reports: dict[str, dict], metric: str, group_by: str, out_png: Path, title: str) -> Path:
    """Grouped bars of `metric` per `group_by` value, one bar per run, with the interval as error bars.

    `reports` maps run name -> `metrics.evaluation_report` result; values where the rate is
    undefined (the false-negative rate of real items) are left out.
    """
    values = sorted({v for r in reports.values() for v, g in r["groups"].get(group_by, {}).items()
                     if (g.get(metric) or {}).get("value") is not None})
    width = 0.8 / max(len(reports), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(values) * max(len(reports), 1) ** 0.5 + 2), 3.8))
    for i, (name, report) in enumerate(reports.items()):
        rates = [report["groups"].get(group_by, {}).get(v, {}).get(metric) or {} for v in values]
        heights = [r.get("value") if r.get("value") is not None else float("nan") for r in rates]
        errors = [[h - r["low"] if r.get("low") is not None else 0 for h, r in zip(heights, rates)],
                  [r["high"] - h if r.get("high") is not None else 0 for h, r in zip(heights, rates)]]
        positions = [x + (i - (len(reports) - 1) / 2) * width for x in range(len(values))]
        bars = ax.bar(positions, heights, width, yerr=errors, capsize=3, label=name)
        ax.bar_label(bars, fmt="%.2f", label_type="center", fontsize="small")  # a zero bar still says 0.00
    ax.set_xticks(range(len(values)), [v or "(none)" for v in values], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # never over a bar
    return save_figure(fig, out_png)


def plot_confusion_matrices(reports: dict[str, dict], out_png: Path) -> Path:
    """One panel per run: counts of true real/fake against answered real/fake/unparsable."""
    fig, axes = plt.subplots(1, len(reports), figsize=(3.6 * len(reports), 3.2), squeeze=False)
    for ax, (name, report) in zip(axes[0], reports.items()):
        overall = report["overall"]
        confusion = overall.get("confusion") or {"rows": ["real", "fake"], "columns": ["real", "fake", "unparsable"],
                                                 "matrix": [[0, 0, 0], [0, 0, 0]]}
        matrix = confusion["matrix"]
        top = max(max(map(max, matrix)), 1)
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        for r, row in enumerate(matrix):
            for c, count in enumerate(row):
                ax.text(c, r, str(count), ha="center", va="center", fontsize=12,
                        color="white" if count > top / 2 else "black")
        ax.set_xticks(range(len(confusion["columns"])), confusion["columns"])
        ax.set_yticks(range(len(confusion["rows"])), confusion["rows"])
        ax.set_xlabel("answer")
        ax.set_ylabel("truth")
        ax.set_title(name)
    return save_figure(fig, out_png)
