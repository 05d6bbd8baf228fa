"""`jobs.compare` on synthetic evaluation folders with a known difference (no Ray, no model)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import compare
from raytrain.eval.metrics import compare_runs, evaluation_report
from raytrain.eval.report import FULL_SCHEMA, METRICS, PREDICTIONS, run_markdown

# 10 face-swap and 10 lip-sync fakes, 20 reals, and one unreadable clip.
ITEMS = ([("face-swap", "fake")] * 10 + [("lip-sync", "fake")] * 10 + [("real", "real")] * 20
         + [("lip-sync", "fake")])


def _records(answers: list[str | None]) -> list[dict]:
    records = []
    for i, ((category, label), answer) in enumerate(zip(ITEMS, answers)):
        unreadable = i == len(ITEMS) - 1
        records.append({
            "id": f"item-{i:02d}", "path": f"/clips/{i}.mp4", "media": "video", "label": label, "category": category,
            "status": "unreadable" if unreadable else "ok" if answer else "unparsable",
            "error": "cannot decode" if unreadable else "", "response": None if unreadable else f"<answer>{answer}</answer>",
            "answer": answer, "format_ok": answer is not None, "mode_ok": None, "truncated": False, "num_tokens": 5,
            "latency_s": 0.1, "source": "synthetic", "domain": "",
        })
    return records


# Baseline: calls everything real. Trained: every face-swap caught, 8 of 10 lip-syncs, one real called fake.
BASELINE = ["real"] * 40 + [None]
TRAINED = ["fake"] * 10 + ["fake"] * 8 + ["real"] * 2 + ["fake"] + ["real"] * 19 + [None]


def _write_run(out, name: str, answers: list[str | None]) -> None:
    records = _records(answers)
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records, schema=FULL_SCHEMA), out / PREDICTIONS)
    summary = {"name": name, "model": name, "data": "synthetic", "split": "test", "mode": None, "confidence": 0.95,
               **evaluation_report(records, resamples=200),
               "unreadable": [{"path": r["path"], "reason": r["error"]} for r in records if r["status"] == "unreadable"]}
    (out / METRICS).write_text(json.dumps(summary))


def _row(rows: list[dict], metric: str) -> dict:
    return next(r for r in rows if r["metric"] == metric)


def test_compare_known_difference_tables_and_plots(tmp_path):
    _write_run(tmp_path / "base", "baseline", BASELINE)
    _write_run(tmp_path / "dapo", "after DAPO", TRAINED)
    _write_run(tmp_path / "same", "rerun", BASELINE)
    result = compare.main([str(tmp_path / "base"), str(tmp_path / "dapo"), str(tmp_path / "same"),
                           "--output", str(tmp_path / "cmp")])
    assert result["runs"] == ["baseline", "after DAPO", "rerun"] and result["n"]["baseline"] == 40

    accuracy = _row(result["overall"], "accuracy")
    assert accuracy["values"] == {"baseline": 0.5, "after DAPO": pytest.approx(37 / 40), "rerun": 0.5}
    versus = accuracy["versus"]["after DAPO"]
    assert versus["difference"] == pytest.approx(0.425)
    # Discordant pairs: 1 real only the baseline gets right, 18 fakes only the trained run catches.
    assert (versus["mcnemar"]["a_only"], versus["mcnemar"]["b_only"], versus["mcnemar"]["n"]) == (1, 18, 40)
    assert versus["mcnemar"]["p_value"] == pytest.approx(2 * 20 / 2 ** 19) and versus["significant"]
    same = accuracy["versus"]["rerun"]
    assert same["difference"] == 0 and same["mcnemar"]["p_value"] == 1.0 and not same["significant"]
    fnr = _row(result["overall"], "false_negative_rate")["versus"]["after DAPO"]
    assert fnr["difference"] == pytest.approx(-0.9) and fnr["mcnemar"]["b_only"] == 18
    assert _row(result["overall"], "precision")["versus"]["after DAPO"]["mcnemar"] is None

    groups = result["groups"]
    assert list(groups) == ["face-swap", "lip-sync", "real"]
    face_swap = _row(groups["face-swap"], "accuracy")["versus"]["after DAPO"]
    assert face_swap["difference"] == 1.0 and face_swap["mcnemar"]["p_value"] == pytest.approx(2 / 2 ** 10)
    lip_sync_fnr = _row(groups["lip-sync"], "false_negative_rate")
    assert lip_sync_fnr["values"]["after DAPO"] == pytest.approx(0.2)  # the unreadable lip-sync is not a miss
    real = _row(groups["real"], "accuracy")["versus"]["after DAPO"]
    assert real["difference"] == pytest.approx(-0.05) and real["mcnemar"]["p_value"] == 1.0 and not real["significant"]
    real_fnr = _row(groups["real"], "false_negative_rate")
    assert real_fnr["values"]["baseline"] is None and real_fnr["versus"]["after DAPO"]["mcnemar"] is None

    out = tmp_path / "cmp"
    markdown = (out / "comparison.md").read_text()
    assert "| accuracy | 0.500 | 0.925 | 0.500 | +0.425 | 7.63e-05 * | +0.000 | 1 |" in markdown
    assert "| real | – | – | – | – | – | – | – |" in markdown  # no fakes: no false-negative rate to test
    assert json.loads((out / "comparison.json").read_text())["runs"] == result["runs"]
    for name in ("accuracy_by_category.png", "false_negative_rate_by_category.png", "confusion_matrices.png"):
        assert f"]({name})" in markdown
        with Image.open(out / name) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 300, name
        assert pixels.std() > 10, f"{name} is blank"


def test_compare_refuses_one_run_and_same_names(tmp_path):
    _write_run(tmp_path / "a", "same", BASELINE)
    _write_run(tmp_path / "b", "same", TRAINED)
    with pytest.raises(SystemExit):
        compare.main([str(tmp_path / "a"), "--output", str(tmp_path / "cmp")])
    with pytest.raises(ValueError, match="names must differ"):
        compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "cmp")])
    with pytest.raises(SystemExit, match="not found"):
        compare.main([str(tmp_path / "a"), str(tmp_path / "missing"), "--output", str(tmp_path / "cmp")])
    with pytest.raises(ValueError):
        compare_runs([("a", [], {})])


def test_run_report_markdown(tmp_path):
    records = _records(TRAINED)
    summary = {"name": "after DAPO", "model": "m", "data": "d", "split": "test", "mode": "think", "confidence": 0.95,
               **evaluation_report(records, resamples=200),
               "unreadable": [{"path": "/clips/40.mp4", "reason": "cannot decode"}]}
    markdown = run_markdown(summary)
    assert "41 items: 40 scored, 1 unreadable" in markdown
    assert "| accuracy | 0.925 | [0.801, 0.974] |" in markdown
    assert "| fake | 2 | 18 | 0 |" in markdown  # the confusion matrix
    assert "## Per category" in markdown and "| lip-sync | 10 | 0.800 [0.49, 0.94]" in markdown
    assert "## Per source" not in markdown  # one source only: the overall table already says it
    assert "- `/clips/40.mp4`: cannot decode" in markdown
