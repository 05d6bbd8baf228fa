import math

import pytest

from raytrain.eval.metrics import classification_metrics, detection_metrics, evaluation_report, mcnemar

# 4 fakes: 2 caught, 1 called real, 1 unparsable. 3 reals: 2 right, 1 called fake.
LABELS = ["fake", "fake", "fake", "fake", "real", "real", "Real"]
PREDICTIONS = ["fake", "fake", "real", None, "real", "real", "fake"]


def test_classification_metrics_hand_computed():
    metrics = classification_metrics(LABELS, PREDICTIONS)
    assert metrics == {
        "accuracy": pytest.approx(4 / 7),
        "precision": pytest.approx(2 / 3),  # TP 2, FP 1
        "recall": pytest.approx(0.5),  # 2 of 4 fakes
        "f1": pytest.approx(4 / 7),  # 2 * (2/3 * 1/2) / (2/3 + 1/2)
        "false_negative_rate": pytest.approx(0.5),  # real + unparsable over 4 fakes
        "false_positive_rate": pytest.approx(1 / 3),
        "unparsable": 1,
        "n": 7,
    }


def test_classification_metrics_without_fakes_predicted():
    metrics = classification_metrics(["real", "fake"], ["real", None])
    assert metrics["precision"] == 0.0 and metrics["f1"] == 0.0
    assert metrics["false_negative_rate"] == 1.0 and metrics["accuracy"] == 0.5


@pytest.mark.parametrize(
    "labels, predictions",
    [(["fake"], ["real", "fake"]), (["maybe"], ["fake"]), (["fake"], ["maybe"]), ([], [])],
)
def test_classification_metrics_rejects_bad_input(labels, predictions):
    with pytest.raises(ValueError):
        classification_metrics(labels, predictions)


Z95 = 1.959963984540054  # the 97.5% standard normal quantile


def _wilson(k: int, n: int) -> tuple[float, float]:
    # Wilson (1927) score interval, written out to check SciPy's against.
    p, z2 = k / n, Z95 ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return centre - half, centre + half


def test_detection_metrics_hand_computed_confusion_and_intervals():
    format_ok = [True, True, True, False, True, True, True]
    mode_ok = [True, False, True, True, True, True, None]
    metrics = detection_metrics(LABELS, PREDICTIONS, format_ok, mode_ok, resamples=200)
    # Truth real: 2 answered real, 1 fake. Truth fake: 1 real, 2 fake, 1 unparsable.
    assert metrics["confusion"]["matrix"] == [[2, 1, 0], [1, 2, 1]]
    assert metrics["confusion"]["columns"] == ["real", "fake", "unparsable"]
    expected = {  # (k, n) of each proportion
        "accuracy": (4, 7), "precision": (2, 3), "recall": (2, 4), "false_negative_rate": (2, 4),
        "false_positive_rate": (1, 3), "format_compliance": (6, 7), "mode_compliance": (5, 6),
    }
    for name, (k, n) in expected.items():
        rate = metrics[name]
        assert (rate["k"], rate["n"]) == (k, n), name
        assert rate["value"] == pytest.approx(k / n), name
        assert (rate["low"], rate["high"]) == pytest.approx(_wilson(k, n)), name
    f1 = metrics["f1"]
    assert f1["value"] == pytest.approx(4 / 7)
    assert 0.0 <= f1["low"] <= f1["value"] <= f1["high"] <= 1.0
    assert metrics["unparsable"] == 1 and metrics["n"] == 7


def test_detection_metrics_undefined_rates_are_none_not_zero():
    # Only reals, none called fake: recall, FNR, precision and F1 have nothing to measure.
    metrics = detection_metrics(["real", "real"], ["real", None], [True, False])
    for name in ("recall", "false_negative_rate", "precision", "f1", "mode_compliance"):
        assert metrics[name]["value"] is None, name
    assert metrics["accuracy"]["value"] == 0.5 and metrics["false_positive_rate"]["value"] == 0.0
    # All items right: the interval still covers the point, and stops at 1.
    perfect = detection_metrics(["fake"] * 5, ["fake"] * 5, [True] * 5)
    assert perfect["accuracy"]["high"] == pytest.approx(1.0) and perfect["accuracy"]["low"] == pytest.approx(_wilson(5, 5)[0])
    assert perfect["f1"]["value"] == 1.0 and perfect["f1"]["low"] == perfect["f1"]["high"] == 1.0


def _record(i, label, answer, category, status="ok", **extra) -> dict:
    return {"id": f"item-{i}", "label": label, "answer": answer, "category": category, "source": "synthetic",
            "domain": "", "status": status, "format_ok": answer is not None, "mode_ok": None, **extra}


def test_evaluation_report_per_category_and_unreadable_apart():
    categories = ["lip-sync", "lip-sync", "face-swap", "face-swap", "real", "real", "real"]
    records = [_record(i, label.lower(), answer, category, status="ok" if answer else "unparsable")
               for i, (label, answer, category) in enumerate(zip(LABELS, PREDICTIONS, categories))]
    # An unreadable lip-sync fake: counted as unreadable, not as a missed fake.
    records.append(_record(99, "fake", None, "lip-sync", status="unreadable"))
    report = evaluation_report(records, resamples=100)
    overall = report["overall"]
    assert (overall["total"], overall["n"], overall["unreadable"], overall["unparsable"]) == (8, 7, 1, 1)
    assert overall["confusion"]["matrix"] == [[2, 1, 0], [1, 2, 1]]
    by_category = report["groups"]["category"]
    assert list(by_category) == ["face-swap", "lip-sync", "real"]
    lip_sync = by_category["lip-sync"]
    assert (lip_sync["n"], lip_sync["unreadable"], lip_sync["accuracy"]["value"]) == (2, 1, 1.0)
    assert lip_sync["false_negative_rate"]["value"] == 0.0
    face_swap = by_category["face-swap"]
    assert face_swap["accuracy"]["value"] == 0.0 and face_swap["unparsable"] == 1
    assert face_swap["false_negative_rate"]["value"] == 1.0
    assert face_swap["confusion"]["matrix"] == [[0, 0, 0], [1, 0, 1]]
    assert by_category["real"]["false_positive_rate"]["value"] == pytest.approx(1 / 3)
    assert by_category["real"]["recall"]["value"] is None
    assert list(report["groups"]["source"]) == ["synthetic"] and list(report["groups"]["domain"]) == [""]
    # A group with nothing readable reports its counts only.
    only_bad = evaluation_report([_record(1, "fake", None, "x", status="unreadable")])["overall"]
    assert only_bad == {"total": 1, "unreadable": 1, "n": 0, "unparsable": 0}


def test_mcnemar_exact_hand_computed():
    # 1 item only A gets right, 6 only B: p = 2 * P(X <= 1 | 7, 1/2) = 2 * 8/128.
    a = [True] * 3 + [True] + [False] * 6 + [False] * 2
    b = [True] * 3 + [False] + [True] * 6 + [False] * 2
    assert mcnemar(a, b) == {"a_only": 1, "b_only": 6, "n": 12, "p_value": pytest.approx(16 / 128)}
    assert mcnemar([False] * 8, [True] * 8)["p_value"] == pytest.approx(2 / 256)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])
