import json

from raytrain.train.metrics import keep_records_through, log_metrics


def test_a_resume_keeps_one_record_per_step(tmp_path):
    # Steps 1-3 logged, the run died after step 3's record but before its checkpoint; resumed from step 2.
    for step in (1, 2, 3):
        log_metrics(tmp_path, {"step": step, "loss": float(step)})
    keep_records_through(tmp_path, 2)
    log_metrics(tmp_path, {"step": 3, "loss": 30.0})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_fresh_start_drops_an_unfinished_attempts_records_and_a_missing_file_is_fine(tmp_path):
    keep_records_through(tmp_path, 0)
    assert not (tmp_path / "metrics.jsonl").exists()
    log_metrics(tmp_path, {"step": 1, "loss": 1.0})
    keep_records_through(tmp_path, 0)  # no checkpoint was ever completed: step 1 is trained again
    assert (tmp_path / "metrics.jsonl").read_text() == ""
