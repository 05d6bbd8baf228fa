"""Compare evaluations side by side: `python -m jobs.compare OUT_A OUT_B ... --output DIR`.

OUT_* are `jobs.evaluate` output folders; the first is the baseline (e.g. the published
checkpoint, then after SFT, after DAPO). Writes `DIR/comparison.md` and `DIR/comparison.json`
(each metric and per-category accuracy and false-negative rate per run, the difference from the
baseline, and the exact McNemar test of it on the items both runs read), and the plots
`accuracy_by_category.png`, `false_negative_rate_by_category.png` and `confusion_matrices.png`.
"""

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from raytrain.eval.metrics import compare_runs
from raytrain.eval.plots import plot_confusion_matrices, plot_rate_by_group
from raytrain.eval.report import METRICS, PREDICTIONS, comparison_markdown

GROUP_BY = "category"


def load_run(out: Path) -> tuple[str, list[dict], dict]:
    """(name, prediction records, metrics summary) of one `jobs.evaluate` output folder."""
    out = Path(out)
    for name in (METRICS, PREDICTIONS):
        if not (out / name).is_file():
            raise SystemExit(f"error: {out / name} not found: is {out} a finished jobs.evaluate output?")
    summary = json.loads((out / METRICS).read_text())
    return summary["name"], pq.read_table(out / PREDICTIONS).to_pylist(), summary


def compare(outs: list[Path], output: Path) -> dict:
    runs = [load_run(out) for out in outs]
    comparison = compare_runs(runs, group_by=GROUP_BY)
    reports = {name: summary for name, _, summary in runs}
    output.mkdir(parents=True, exist_ok=True)
    plots = [
        plot_rate_by_group(reports, "accuracy", GROUP_BY, output / "accuracy_by_category.png", "accuracy per category"),
        plot_rate_by_group(reports, "false_negative_rate", GROUP_BY, output / "false_negative_rate_by_category.png",
                           "false-negative rate per category (fakes missed)"),
        plot_confusion_matrices(reports, output / "confusion_matrices.png"),
    ]
    (output / "comparison.json").write_text(json.dumps(comparison, indent=2))
    (output / "comparison.md").write_text(comparison_markdown(comparison, [p.name for p in plots]))
    return comparison


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="jobs.evaluate output folders, baseline first")
    p.add_argument("--output", type=Path, required=True, help="folder for the table and plots")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("give at least two evaluation folders")
    comparison = compare(args.runs, args.output)
    print((args.output / "comparison.md").read_text())
    return comparison


if __name__ == "__main__":
    main()
