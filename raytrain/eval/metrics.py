"""Detection metrics with "fake" as the positive class (SPEC sections 6 and 7).

An unparsable prediction (``None``) is always wrong: on a fake it is a
false negative, the error BusterX++ is most prone to, so it is never
allowed to hide from the false-negative rate. Unreadable media never
reach these functions as predictions: `evaluation_report` counts them
apart, so a file that could not be decoded is never mistaken for a wrong answer.

Point estimates come from scikit-learn; intervals from SciPy: Wilson score
intervals for proportions (`binomtest(...).proportion_ci`) and a percentile
bootstrap for F1, which is not a binomial proportion. Paired comparisons of
two runs use the exact McNemar test: a two-sided binomial test with p = 1/2
on the discordant pairs (items one run gets right and the other wrong).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from scipy.stats import binomtest, bootstrap
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

_CLASSES = ("real", "fake")
_UNPARSABLE = "none"
CONFUSION_COLUMNS = ("real", "fake", "unparsable")  # predicted; rows are the true real/fake
GROUP_KEYS = ("category", "source", "domain")
RATES = ("accuracy", "precision", "recall", "f1", "false_negative_rate", "false_positive_rate",
         "format_compliance", "mode_compliance")
UNREADABLE = "unreadable"  # prediction status of media that could not be decoded
# DX-LLaVA's binary head, scored from its probability of fake (`head_prob`) beside the text answer.
HEAD_RATES = ("head_accuracy", "head_auc")
HEAD_THRESHOLD = 0.5


def _rate(count: int, total: int) -> float:
    # A class absent from the set has no errors to report.
    return count / total if total else 0.0


def _normalise(labels: Sequence[str], predictions: Sequence[str | None]) -> tuple[list[str], list[str]]:
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("metrics of an empty set are undefined")
    y_true = [label.lower() for label in labels]
    y_pred = [_UNPARSABLE if p is None else p.lower() for p in predictions]
    bad_labels = set(y_true) - set(_CLASSES)
    bad_predictions = set(y_pred) - {*_CLASSES, _UNPARSABLE}
    if bad_labels or bad_predictions:
        raise ValueError(
            f"labels must be in {_CLASSES} and predictions in {_CLASSES} or None; "
            f"got labels {sorted(bad_labels)}, predictions {sorted(bad_predictions)}"
        )
    return y_true, y_pred


def confusion(labels: Sequence[str], predictions: Sequence[str | None]) -> list[list[int]]:
    """2 x 3 counts: rows true real, fake; columns predicted real, fake, unparsable (`CONFUSION_COLUMNS`)."""
    y_true, y_pred = _normalise(labels, predictions)
    return confusion_matrix(y_true, y_pred, labels=[*_CLASSES, _UNPARSABLE]).tolist()[:2]


def classification_metrics(
    labels: Sequence[str], predictions: Sequence[str | None]
) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1, false-negative and false-positive rates, unparsable count, n.

    ``None`` predictions become a third class so they count as wrong; the
    false-negative rate is (fakes predicted real or unparsable) / fakes, i.e.
    1 - recall, and the false-positive rate is (reals predicted fake) / reals.
    Precision/recall/F1 use zero_division=0.
    """
    y_true, y_pred = _normalise(labels, predictions)
    (real_real, real_fake, real_none), (fake_real, fake_fake, fake_none) = confusion(y_true, y_pred)
    n_real, n_fake = real_real + real_fake + real_none, fake_real + fake_fake + fake_none
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=["fake"], average=None, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision[0]),
        "recall": float(recall[0]),
        "f1": float(f1[0]),
        "false_negative_rate": _rate(fake_real + fake_none, n_fake),
        "false_positive_rate": _rate(real_fake, n_real),
        "unparsable": y_pred.count(_UNPARSABLE),
        "n": len(y_true),
    }


def proportion(successes: int, n: int, confidence: float = 0.95) -> dict[str, float | int | None]:
    """`successes / n` with its Wilson score interval; value and bounds are None when n = 0 (undefined)."""
    if n == 0:
        return {"value": None, "low": None, "high": None, "k": 0, "n": 0}
    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return {"value": successes / n, "low": float(ci.low), "high": float(ci.high), "k": successes, "n": n}


def _f1_statistic(true_fake: np.ndarray, pred_fake: np.ndarray, axis: int = -1) -> np.ndarray:
    # Vectorised over bootstrap resamples: F1 = 2 TP / (2 TP + FP + FN), 0 where undefined (sklearn's zero_division=0).
    tp = np.sum(true_fake & pred_fake, axis=axis)
    wrong = np.sum(true_fake != pred_fake, axis=axis)
    denominator = 2 * tp + wrong
    return np.divide(2 * tp, denominator, out=np.zeros(np.shape(denominator)), where=denominator > 0)


def f1_interval(labels: Sequence[str], predictions: Sequence[str | None], confidence: float = 0.95,
                resamples: int = 1000, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of F1 (fake positive) over items; (None, None) when it is undefined."""
    y_true, y_pred = _normalise(labels, predictions)
    true_fake = np.asarray(y_true) == "fake"
    pred_fake = np.asarray(y_pred) == "fake"
    if len(y_true) < 2 or not (true_fake.any() or pred_fake.any()):
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant resample distribution warns; its interval is still right
        result = bootstrap((true_fake, pred_fake), _f1_statistic, paired=True, vectorized=True,
                           n_resamples=resamples, confidence_level=confidence, method="percentile",
                           rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return (float(low), float(high)) if np.isfinite(low) and np.isfinite(high) else (None, None)


def detection_metrics(labels: Sequence[str], predictions: Sequence[str | None], format_ok: Sequence[bool],
                      mode_ok: Sequence[bool | None] | None = None, *, confidence: float = 0.95,
                      resamples: int = 1000, seed: int = 0) -> dict:
    """Every rate of `RATES` as {value, low, high, k, n}, the confusion matrix, unparsable count and n.

    A rate whose denominator is empty (recall of a set without fakes) is None, not 0.
    `mode_ok` holds per-item mode compliance (None when the prompt carried no mode flag).
    """
    if not len(labels) == len(format_ok) or (mode_ok is not None and len(mode_ok) != len(labels)):
        raise ValueError(f"lengths differ: {len(labels)} labels, {len(format_ok)} format flags")
    point = classification_metrics(labels, predictions)
    matrix = confusion(labels, predictions)
    (real_real, real_fake, real_none), (fake_real, fake_fake, fake_none) = matrix
    n_real, n_fake = real_real + real_fake + real_none, fake_real + fake_fake + fake_none
    rates = {
        "accuracy": proportion(real_real + fake_fake, point["n"], confidence),
        "precision": proportion(fake_fake, fake_fake + real_fake, confidence),
        "recall": proportion(fake_fake, n_fake, confidence),
        "false_negative_rate": proportion(fake_real + fake_none, n_fake, confidence),
        "false_positive_rate": proportion(real_fake, n_real, confidence),
        "format_compliance": proportion(sum(bool(f) for f in format_ok), len(format_ok), confidence),
    }
    for name in ("accuracy", "precision", "recall", "false_negative_rate", "false_positive_rate"):
        if rates[name]["value"] is not None:
            rates[name]["value"] = point[name]  # sklearn's number; the interval is Wilson's
    judged = [bool(m) for m in (mode_ok or []) if m is not None]
    rates["mode_compliance"] = proportion(sum(judged), len(judged), confidence)
    f1_defined = 2 * fake_fake + real_fake + fake_real + fake_none > 0
    low, high = f1_interval(labels, predictions, confidence, resamples, seed) if f1_defined else (None, None)
    rates["f1"] = {"value": point["f1"] if f1_defined else None, "low": low, "high": high}
    return {
        **{name: rates[name] for name in RATES},
        "confusion": {"rows": list(_CLASSES), "columns": list(CONFUSION_COLUMNS), "matrix": matrix},
        "unparsable": point["unparsable"],
        "n": point["n"],
    }


def head_metrics(labels: Sequence[str], fake_probs: Sequence[float], confidence: float = 0.95) -> dict:
    """A binary classifier's own metrics from its probabilities of fake: `head_accuracy` (fake when the
    probability is at least `HEAD_THRESHOLD`; a Wilson interval) and `head_auc` (ROC-AUC, scikit-learn;
    None when the set holds one class only), as {value, ...} like the other rates, and `head_n`."""
    if len(labels) != len(fake_probs):
        raise ValueError(f"{len(labels)} labels but {len(fake_probs)} head probabilities")
    if not labels:
        return {"head_accuracy": proportion(0, 0, confidence), "head_auc": {"value": None}, "head_n": 0}
    y_true = np.asarray([label.lower() == "fake" for label in labels])
    probs = np.asarray(fake_probs, dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("head probabilities must be finite and in [0, 1]")
    correct = int(((probs >= HEAD_THRESHOLD) == y_true).sum())
    auc = float(roc_auc_score(y_true, probs)) if 0 < y_true.sum() < len(y_true) else None
    return {"head_accuracy": proportion(correct, len(labels), confidence), "head_auc": {"value": auc}, "head_n": len(labels)}


def _group_metrics(records: list[dict], **options) -> dict:
    readable = [r for r in records if r["status"] != UNREADABLE]
    counts = {"total": len(records), "unreadable": len(records) - len(readable)}
    if not readable:
        return {**counts, "n": 0, "unparsable": 0}
    metrics = detection_metrics(
        [r["label"] for r in readable], [r["answer"] for r in readable], [r["format_ok"] for r in readable],
        [r.get("mode_ok") for r in readable], **options,
    )
    headed = [r for r in readable if r.get("head_prob") is not None]
    if headed:  # a model with a binary head (DX-LLaVA): its own metrics beside the text answer's
        metrics.update(head_metrics([r["label"] for r in headed], [r["head_prob"] for r in headed],
                                    options.get("confidence", 0.95)))
    return {**metrics, **counts}


def evaluation_report(records: Iterable[dict], group_by: Sequence[str] = GROUP_KEYS, **options) -> dict:
    """Metrics overall and per value of each `group_by` column, from prediction records.

    A record has `label`, `answer` (real/fake/None), `status` (`"unreadable"` for media that could not
    be decoded: counted in `unreadable`, never in the rates), `format_ok`, optional `mode_ok`, optional
    `head_prob` (a binary head's probability of fake: adds `head_metrics` where present), and the
    `group_by` columns. `options` go to `detection_metrics`.
    """
    records = list(records)
    groups: dict[str, dict] = {}
    for key in group_by:
        members: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            members[str(record.get(key) or "")].append(record)
        groups[key] = {value: _group_metrics(members[value], **options) for value in sorted(members)}
    return {"overall": _group_metrics(records, **options), "groups": groups}


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, float | int]:
    """Exact McNemar test of two runs on the same items: binomial test (p = 1/2) on the discordant pairs.

    Returns `a_only` (items only run A gets right), `b_only`, `n` (paired items) and the two-sided `p_value`
    (1.0 without discordant pairs).
    """
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired test needs the same items: {len(a_correct)} vs {len(b_correct)}")
    a_only = sum(bool(a) and not bool(b) for a, b in zip(a_correct, b_correct))
    b_only = sum(bool(b) and not bool(a) for a, b in zip(a_correct, b_correct))
    discordant = a_only + b_only
    p_value = binomtest(a_only, discordant, 0.5).pvalue if discordant else 1.0
    return {"a_only": a_only, "b_only": b_only, "n": len(a_correct), "p_value": float(p_value)}


# Paired per-item success of each rate McNemar can test: (items it is defined on, success of an item).
# The rate's direction does not matter to the test: FNR's discordant pairs are recall's.
_PAIRED = {
    "accuracy": (lambda r: True, lambda r: r["answer"] == r["label"]),
    "recall": (lambda r: r["label"] == "fake", lambda r: r["answer"] == "fake"),
    "false_negative_rate": (lambda r: r["label"] == "fake", lambda r: r["answer"] == "fake"),
    "false_positive_rate": (lambda r: r["label"] == "real", lambda r: r["answer"] != "fake"),
    "format_compliance": (lambda r: True, lambda r: bool(r["format_ok"])),
    "mode_compliance": (lambda r: r.get("mode_ok") is not None, lambda r: bool(r.get("mode_ok"))),
}


def paired_test(baseline: Sequence[dict], other: Sequence[dict], metric: str, *,
                where=lambda r: True) -> dict | None:
    """McNemar test of `metric` between two runs' prediction records on the items both read, matched by id.

    `where` restricts the items (e.g. one category). None for rates without per-item success
    (precision and F1 depend on which items are predicted fake) and without items to pair.
    """
    if metric not in _PAIRED:
        return None
    applies, success = _PAIRED[metric]
    theirs = {r["id"]: r for r in other if r["status"] != UNREADABLE}
    pairs = [(r, theirs[r["id"]]) for r in baseline
             if r["status"] != UNREADABLE and r["id"] in theirs and applies(r) and where(r)]
    if not pairs:
        return None
    return mcnemar([success(a) for a, _ in pairs], [success(b) for _, b in pairs])


def _normalised_records(records: Iterable[dict]) -> list[dict]:
    return [{**r, "label": r["label"].lower(), "answer": r["answer"].lower() if r["answer"] else None} for r in records]


def compare_runs(runs: Sequence[tuple[str, list[dict], dict]], *, group_by: str = "category",
                 significance: float = 0.05) -> dict:
    """Side by side: each run's metrics (from its report) and, for every run after the first, its
    difference from the first and the McNemar test of that difference on the same items.

    `runs` are (name, prediction records, `evaluation_report` result). Per-`group_by` rows compare
    accuracy and the false-negative rate.
    """
    if len(runs) < 2:
        raise ValueError("a comparison needs at least two runs")
    names = [name for name, _, _ in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must differ: {names}")
    records = {name: _normalised_records(recs) for name, recs, _ in runs}
    reports = {name: report for name, _, report in runs}
    baseline = names[0]

    def row(metric: str, values: dict[str, dict], where=lambda r: True) -> dict:
        out = {"metric": metric, "values": {n: (values[n].get(metric) or {}).get("value") for n in names}, "versus": {}}
        for name in names[1:]:
            a, b = out["values"][baseline], out["values"][name]
            test = paired_test(records[baseline], records[name], metric, where=where)
            out["versus"][name] = {
                "difference": None if a is None or b is None else b - a,
                "mcnemar": test,
                "significant": None if test is None else test["p_value"] < significance,
            }
        return out

    overall = [row(metric, {n: reports[n]["overall"] for n in names}) for metric in RATES]
    values = sorted({v for n in names for v in reports[n]["groups"].get(group_by, {})})
    per_group = {}
    for value in values:
        group_reports = {n: reports[n]["groups"].get(group_by, {}).get(value, {}) for n in names}
        in_group = (lambda v: lambda r: str(r.get(group_by) or "") == v)(value)
        per_group[value] = [row(metric, group_reports, in_group) for metric in ("accuracy", "false_negative_rate")]
    return {"runs": names, "baseline": baseline, "significance": significance, "test": "exact McNemar (binomial on discordant pairs)",
            "overall": overall, "group_by": group_by, "groups": per_group,
            "n": {n: reports[n]["overall"].get("n", 0) for n in names}}
