"""The experiment trackers for real (TensorBoard, MLflow's file store, W&B offline), without a training run:
what they read back, a resumed run continuing the same tracker run, and trackers that cannot write."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from raytrain.config import ConfigError, parse_config
from raytrain.config.sections import RunConfig
from raytrain.observe.trackers import MLFLOW_DIR, Trackers, flatten, mlflow_name
from raytrain.train.metrics import log_metrics
from tests.helpers.trackers import history, run_files, tensorboard_scalars


def _record(step: int) -> dict:
    return {"step": step, "policy_version": step, "loss": 0.5 / step, "reward/total": 0.25 * step, "reward/accuracy": 0.5,
            "reward/accuracy/face_swap": 1.0 / step, "groups_kept": 3, "time/rollout_s": 1.25}


def mlflow_run(out):
    client = MlflowClient((out / MLFLOW_DIR).as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "deepfake-rl"]
    runs = client.search_runs([experiment.experiment_id])
    return client, runs


def test_trackers_read_back_and_a_resume_continues_the_same_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    run = RunConfig(name="unit", output_dir=out, loggers=["jsonl", "tensorboard", "mlflow", "wandb"])
    config = {"run": {"name": "unit"}, "train": {"lr": 0.001, "total_steps": 3}}
    expected = {}  # step -> the record metrics.jsonl holds (rounded), the last one of a step
    first = Trackers(run, config)
    assert set(first.open) == {"tensorboard", "mlflow", "wandb"}
    for step in (1, 2):
        first.log(expected.setdefault(step, log_metrics(out, _record(step))))
    first.close()
    # Resumed from the checkpoint of step 1: step 2 is logged again, then step 3.
    resumed = Trackers(run, {**config, "train": {"lr": 0.001, "total_steps": 4}}, step=1)
    for step in (2, 3):
        expected[step] = log_metrics(out, _record(step))
        resumed.log(expected[step])
    resumed.close()

    scalars = tensorboard_scalars(out)
    assert set(scalars) == set(expected[1])
    for key, by_step in scalars.items():  # float32 in the event file; the repeated step 2 once
        assert by_step == pytest.approx({s: r[key] for s, r in expected.items()}, rel=1e-6), key

    client, runs = mlflow_run(out)
    assert len(runs) == 1 and runs[0].info.run_name == "unit"
    run_id = runs[0].info.run_id
    assert runs[0].data.metrics == pytest.approx({mlflow_name(k): v for k, v in expected[3].items()})
    assert [m.value for m in client.get_metric_history(run_id, "reward.total")] == [0.25, 0.5, 0.5, 0.75]
    # Parameters: the first run's config, plus what the resume changed under a key it had not logged (none here).
    assert runs[0].data.params == flatten(config) == {"run.name": "unit", "train.lr": "0.001", "train.total_steps": "3"}

    files = run_files(out)
    assert len(files) == 2 and len({f.name for f in files}) == 1  # two starts of one W&B run id
    rows = [row for f in files for row in history(f)]
    assert [row["_step"] for row in rows] == [1, 2, 2, 3]
    assert all(row[k] == pytest.approx(expected[row["_step"]][k]) for row in rows for k in expected[1])


def test_a_tracker_that_cannot_write_is_reported_once_and_the_rest_go_on(tmp_path, monkeypatch, capsys):
    # Not a directory, so even root cannot write there; and an MLflow server nobody listens on.
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run = RunConfig(name="unit", output_dir=blocked / "run", loggers=["tensorboard", "mlflow"],
                    tracking={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    trackers = Trackers(run, {})
    assert trackers.open == {}
    trackers.log(_record(1))
    trackers.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if "logger dropped" in line]
    assert [line.split()[1] for line in lines] == ["tensorboard", "mlflow"]

    # A tracker that fails while logging is dropped too, and metrics.jsonl goes on.
    out = tmp_path / "ok"
    trackers = Trackers(RunConfig(output_dir=out, loggers=["tensorboard"]), {})
    trackers.open["tensorboard"].writer.close()
    trackers.open["tensorboard"].writer = None  # what a writer whose file went away amounts to: its calls raise
    for step in (1, 2):
        trackers.log(log_metrics(out, _record(step)))
    assert trackers.open == {}
    assert capsys.readouterr().out.count("tensorboard logger dropped") == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_an_unknown_logger_fails_at_start_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.loggers"):
        parse_config({"model": {"path": "m"}, "data": {"manifest": str(tmp_path / "m.parquet")}, "run": {"loggers": ["jsonl", "neptune"]}})
