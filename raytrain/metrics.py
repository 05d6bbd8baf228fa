"""Detection metrics with "fake" as the positive class (SPEC sections 6 and 7).

An unparsable prediction (``None``) is always wrong: on a fake it is a
false negative, the error BusterX++ is most prone to, so it is never
allowed to hide from the false-negative rate.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

_CLASSES = ("real", "fake")
_UNPARSABLE = "none"


def _rate(count: int, total: int) -> float:
    # A class absent from the set has no errors to report.
    return count / total if total else 0.0


def classification_metrics(
    labels: Sequence[str], predictions: Sequence[str | None]
) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1, false-negative and false-positive rates, unparsable count, n.

    ``None`` predictions become a third class so they count as wrong; the
    false-negative rate is (fakes predicted real or unparsable) / fakes, i.e.
    1 - recall, and the false-positive rate is (reals predicted fake) / reals.
    Precision/recall/F1 use zero_division=0.
    """
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

    # Rows: true real/fake/none; columns: predicted real/fake/none.
    counts = confusion_matrix(y_true, y_pred, labels=[*_CLASSES, _UNPARSABLE]).tolist()
    (real_real, real_fake, _), (fake_real, fake_fake, fake_none) = counts[:2]
    n_real, n_fake = sum(counts[0]), sum(counts[1])
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=["fake"], average=None, zero_division=0
    )
    return {
        "accuracy": _rate(real_real + fake_fake, len(y_true)),
        "precision": float(precision[0]),
        "recall": float(recall[0]),
        "f1": float(f1[0]),
        "false_negative_rate": _rate(fake_real + fake_none, n_fake),
        "false_positive_rate": _rate(real_fake, n_real),
        "unparsable": y_pred.count(_UNPARSABLE),
        "n": len(y_true),
    }


def per_category(
    labels: Sequence[str], predictions: Sequence[str | None], categories: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """:func:`classification_metrics` for each category value, keys sorted."""
    if not len(labels) == len(predictions) == len(categories):
        raise ValueError(
            f"lengths differ: {len(labels)} labels, {len(predictions)} predictions, "
            f"{len(categories)} categories"
        )
    members: dict[str, list[int]] = defaultdict(list)
    for index, category in enumerate(categories):
        members[category].append(index)
    return {
        category: classification_metrics(
            [labels[i] for i in members[category]], [predictions[i] for i in members[category]]
        )
        for category in sorted(members)
    }
