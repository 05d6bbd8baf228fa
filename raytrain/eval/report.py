"""The files of an evaluation (`jobs.evaluate`) and the Markdown of it and of a comparison of runs (`jobs.compare`).

Light on imports, so reading and comparing finished evaluations needs no Ray, torch or model code.
"""

from __future__ import annotations

import pyarrow as pa

from raytrain.eval.metrics import CONFUSION_COLUMNS, HEAD_RATES, RATES

PREDICTIONS = "predictions.parquet"
METRICS = "metrics.json"
REPORT = "report.md"
# One row per item. status: "ok" (parsed answer), "unparsable" (a format error, scored as wrong),
# "unreadable" (media not decodable: `error` says why; never scored).
PREDICTION_SCHEMA = pa.schema([
    ("id", pa.string()), ("path", pa.string()), ("media", pa.string()), ("label", pa.string()),
    ("category", pa.string()), ("status", pa.string()), ("error", pa.string()), ("response", pa.string()),
    ("answer", pa.string()), ("format_ok", pa.bool_()), ("mode_ok", pa.bool_()), ("truncated", pa.bool_()),
    ("num_tokens", pa.int64()), ("latency_s", pa.float64()),
    ("head_prob", pa.float64()),  # a binary head's probability of fake (DX-LLaVA); null without a head
])
FULL_SCHEMA = PREDICTION_SCHEMA.append(pa.field("source", pa.string())).append(pa.field("domain", pa.string()))

TITLES = {
    "accuracy": "accuracy", "precision": "precision", "recall": "recall", "f1": "F1",
    "false_negative_rate": "false-negative rate", "false_positive_rate": "false-positive rate",
    "format_compliance": "format compliance", "mode_compliance": "mode compliance",
    "head_accuracy": "head accuracy", "head_auc": "head ROC-AUC",
}
_SHORT = {**TITLES, "false_negative_rate": "FNR", "false_positive_rate": "FPR", "format_compliance": "format",
          "mode_compliance": "mode"}
_NONE = "–"


def _value(value: float | None) -> str:
    return _NONE if value is None else f"{value:.3f}"


def _with_interval(rate: dict | None) -> str:
    if not rate or rate.get("value") is None:
        return _NONE
    if rate.get("low") is None:
        return _value(rate["value"])
    return f"{rate['value']:.3f} [{rate['low']:.2f}, {rate['high']:.2f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _label(value: str) -> str:
    return value or "(none)"


def run_markdown(summary: dict) -> str:
    """The report of one evaluation from its `metrics.json` summary."""
    overall = summary["overall"]
    level = round(summary["confidence"] * 100)
    mode = f"/{summary['mode']}" if summary["mode"] else "no mode flag"
    split = f" (split `{summary['split']}`)" if summary.get("split") else ""
    lines = [
        f"# Evaluation: {summary['name']}", "",
        f"Model `{summary['model']}` on `{summary['data']}`{split}, {mode}, greedy decoding.", "",
        f"{overall['total']} items: {overall['n']} scored, {overall['unreadable']} unreadable (media that could not "
        f"be decoded; not scored), {overall['unparsable']} unparsable responses (format errors, scored as wrong).", "",
    ]
    called = summary.get("called_fake")
    if called and called["value"] is not None:
        lines += [f"Called fake: {called['k']} of {called['n']} scored items ({called['value']:.3f}, {level}% interval "
                  f"[{called['low']:.3f}, {called['high']:.3f}]).", ""]
    if not summary.get("labelled", True):
        lines += ["The clips carry no labels (no labels CSV, no real/ and fake/ folders, no --label): only the share "
                  "called fake and format compliance are measured.", ""]
    if overall["n"]:
        lines += [f"## Overall (fake is the positive class; {level}% intervals: Wilson, F1 bootstrap)", ""]
        lines += _table(["metric", "value", f"{level}% interval"],
                        [[TITLES[m], _value(overall[m]["value"]),
                          _NONE if overall[m].get("low") is None else f"[{overall[m]['low']:.3f}, {overall[m]['high']:.3f}]"]
                         for m in RATES])
    if overall["n"] and "confusion" in overall:
        matrix = overall["confusion"]["matrix"]
        lines += ["", "## Confusion matrix (rows: truth, columns: answer)", ""]
        lines += _table(["", *CONFUSION_COLUMNS], [[label, *map(str, counts)] for label, counts in zip(("real", "fake"), matrix)])
    if overall.get("head_n"):
        lines += _head_section(summary)
    shown = [m for m in RATES if m != "mode_compliance" or summary["mode"]]
    for key, groups in summary["groups"].items():
        if len(groups) < 2:  # one value repeats the overall table
            continue
        lines += ["", f"## Per {key}", ""]
        lines += _table([key, "n", *(_SHORT[m] for m in shown), "unparsable", "unreadable"],
                        [[_label(value), str(g["n"]), *(_with_interval(g.get(m)) for m in shown),
                          str(g["unparsable"]), str(g["unreadable"])] for value, g in groups.items()])
    if summary["unreadable"]:
        lines += ["", "## Unreadable media", ""] + [f"- `{u['path']}`: {u['reason']}" for u in summary["unreadable"]]
    return "\n".join(lines) + "\n"


def _head_section(summary: dict) -> list[str]:
    """The binary head's accuracy and ROC-AUC beside the text answer's accuracy and F1, overall and per domain."""
    rows = [("overall", summary["overall"])] + [(_label(v), g) for v, g in summary["groups"].get("domain", {}).items()]
    lines = ["", "## Binary head and text answer (per domain)", "",
             f"The head says fake when its probability is at least 0.5; {summary['overall']['head_n']} items have one.", ""]
    return lines + _table(["domain", "n", "text accuracy", "text F1", *(TITLES[m] for m in HEAD_RATES)],
                          [[name, str(g.get("n", 0)), _with_interval(g.get("accuracy")), _with_interval(g.get("f1")),
                            *(_with_interval(g.get(m)) for m in HEAD_RATES)] for name, g in rows])


def _p(versus: dict) -> str:
    test = versus["mcnemar"]
    if test is None:
        return _NONE
    return f"{test['p_value']:.3g}{' *' if versus['significant'] else ''}"


def _difference(versus: dict) -> str:
    return _NONE if versus["difference"] is None else f"{versus['difference']:+.3f}"


def _rows_table(first: str, rows: list[tuple[str, dict]], runs: list[str], baseline: str) -> list[str]:
    header = [first, *runs]
    for name in runs[1:]:
        header += [f"{name} − {baseline}", "p"]
    body = []
    for label, row in rows:
        cells = [label, *(_value(row["values"][n]) for n in runs)]
        for name in runs[1:]:
            cells += [_difference(row["versus"][name]), _p(row["versus"][name])]
        body.append(cells)
    return _table(header, body)


def comparison_markdown(comparison: dict, plots: list[str] = ()) -> str:
    """The side-by-side table of `metrics.compare_runs`, overall and per group."""
    runs, baseline = comparison["runs"], comparison["baseline"]
    lines = [
        f"# Comparison: {' vs '.join(runs)}", "",
        f"Differences are each run minus the baseline `{baseline}`. p: {comparison['test']} on the items both "
        f"runs could read; * marks p < {comparison['significance']}. Precision and F1 have no per-item paired test (–).", "",
        "Scored items: " + ", ".join(f"{n} {comparison['n'][n]}" for n in runs), "", "## Overall", "",
    ]
    lines += _rows_table("metric", [(TITLES[r["metric"]], r) for r in comparison["overall"]], runs, baseline)
    for metric in ("accuracy", "false_negative_rate"):
        rows = [(_label(value), next(r for r in group if r["metric"] == metric)) for value, group in comparison["groups"].items()]
        lines += ["", f"## {TITLES[metric].capitalize()} per {comparison['group_by']}", ""]
        lines += _rows_table(comparison["group_by"], rows, runs, baseline)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"
