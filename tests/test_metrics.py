import pytest

from raytrain.metrics import classification_metrics, per_category

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


def test_per_category():
    categories = ["lip-sync", "lip-sync", "face-swap", "face-swap", "real", "real", "real"]
    result = per_category(LABELS, PREDICTIONS, categories)
    assert list(result) == ["face-swap", "lip-sync", "real"]
    assert result["lip-sync"]["accuracy"] == 1.0 and result["lip-sync"]["n"] == 2
    assert result["face-swap"]["accuracy"] == 0.0
    assert result["face-swap"]["unparsable"] == 1
    assert result["face-swap"]["false_negative_rate"] == 1.0
    assert result["real"]["false_positive_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        per_category(LABELS, PREDICTIONS, categories[:-1])
