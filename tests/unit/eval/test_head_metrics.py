"""The binary head's own metrics (DX-LLaVA): accuracy and ROC-AUC per domain beside the text answer's,
from hand-made predictions (no model)."""

import pyarrow as pa
import pytest

from raytrain.eval.metrics import evaluation_report, head_metrics
from raytrain.eval.report import FULL_SCHEMA, run_markdown


def _record(id_, label, answer, head_prob, domain, status="ok"):
    return {"id": id_, "label": label, "answer": answer, "status": status, "format_ok": answer is not None,
            "mode_ok": None, "category": "image-generation" if label == "fake" else "real", "source": "dfr5",
            "domain": domain, "head_prob": head_prob}


# Domain ddim: the head is right on both (fake 0.9, real 0.2); pixart: wrong on both (fake 0.4, real 0.6);
# sit: one fake only (AUC undefined). The text answer differs from the head on purpose.
RECORDS = [
    _record("a", "fake", "fake", 0.9, "ddim"), _record("b", "real", "fake", 0.2, "ddim"),
    _record("c", "fake", "fake", 0.4, "pixart"), _record("d", "real", "real", 0.6, "pixart"),
    _record("e", "fake", None, 0.7, "sit"),
    _record("f", "fake", None, None, "sit", status="unreadable"),  # never scored
]


def test_head_metrics_hand_computed():
    # Over a..d: head right on a, b -> 2/4. AUC: fake scores {0.9, 0.4} vs real {0.2, 0.6}: 3 of 4 pairs ordered.
    metrics = head_metrics(["fake", "real", "fake", "real"], [0.9, 0.2, 0.4, 0.6])
    assert metrics["head_accuracy"]["value"] == 0.5 and metrics["head_accuracy"]["n"] == 4
    assert metrics["head_auc"]["value"] == pytest.approx(0.75)
    assert head_metrics(["fake", "fake"], [0.1, 0.9])["head_auc"]["value"] is None  # one class
    assert head_metrics(["real"], [0.5])["head_accuracy"]["value"] == 0.0  # 0.5 counts as fake
    with pytest.raises(ValueError):
        head_metrics(["fake"], [1.5])


def test_report_per_domain_side_by_side():
    report = evaluation_report(RECORDS, group_by=("domain",))
    overall, domains = report["overall"], report["groups"]["domain"]
    # Five readable items: head right on a, b, e -> 3/5; AUC over fakes {0.9, 0.4, 0.7} vs reals {0.2, 0.6}: 5/6.
    assert overall["head_accuracy"]["value"] == pytest.approx(0.6) and overall["head_n"] == 5
    assert overall["head_auc"]["value"] == pytest.approx(5 / 6)
    assert overall["accuracy"]["value"] == pytest.approx(3 / 5)  # the text answer: a, c and d right
    assert domains["ddim"]["head_accuracy"]["value"] == 1.0 and domains["ddim"]["head_auc"]["value"] == 1.0
    assert domains["pixart"]["head_accuracy"]["value"] == 0.0 and domains["pixart"]["head_auc"]["value"] == 0.0
    assert domains["sit"]["head_auc"]["value"] is None and domains["sit"]["unreadable"] == 1
    summary = {"name": "dx", "model": "m", "data": "d", "split": "test", "mode": None, "confidence": 0.95,
               **evaluation_report(RECORDS), "unreadable": []}
    markdown = run_markdown(summary)
    assert "## Binary head and text answer (per domain)" in markdown
    assert "| pixart | 2 | 1.000" in markdown  # text accuracy 1 beside the head's 0


def test_without_a_head_nothing_is_added():
    plain = [{**r, "head_prob": None} for r in RECORDS]
    report = evaluation_report(plain)
    assert "head_accuracy" not in report["overall"]
    summary = {"name": "x", "model": "m", "data": "d", "split": None, "mode": None, "confidence": 0.95, **report,
               "unreadable": []}
    assert "Binary head" not in run_markdown(summary)


def test_predictions_schema_holds_head_probabilities():
    table = pa.Table.from_pylist(RECORDS, schema=FULL_SCHEMA)
    assert table["head_prob"].to_pylist() == [0.9, 0.2, 0.4, 0.6, 0.7, None]
