"""Experiment trackers of `run.loggers` on training rank 0: TensorBoard, MLflow, Weights & Biases.

Each gets every number of a step's metrics.jsonl record under the same name, and the resolved config
as parameters. The tracker runs' ids are kept in `run.output_dir/trackers.json`, so a resumed run
continues the same tracker run. A tracker that fails (cannot write, cannot reach its server) is
reported once and dropped; the run and `metrics.jsonl` go on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from raytrain.config.sections import RunConfig
from raytrain.observe.console import say

IDS_FILE = "trackers.json"  # under run.output_dir: each tracker's run id
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"
WANDB_DIR = "wandb"


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys (as `--set` names them) -> values as text."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return flat


def scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class TensorBoard:
    """`run.output_dir/tensorboard/`: a resumed run writes a new event file there, discarding the events
    of steps after its checkpoint (`purge_step`), which it logs again."""

    def __init__(self, run: RunConfig, out: Path, config: dict, run_id: str | None, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=step + 1 if run_id else None)
        if not run_id:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flatten(config).items()), 0)
        self.run_id = TENSORBOARD_DIR

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mlflow_name(name: str) -> str:
    """A metrics.jsonl name as MLflow keeps it: `/` as `.`. MLflow's file store makes each name a path, and
    `reward/accuracy` (a file) cannot also be the folder of `reward/accuracy/<category>`."""
    return name.replace("/", ".")


class MLflow:
    """One MLflow run in `run.tracking.mlflow_experiment`, on `run.tracking.mlflow_tracking_uri` or a local
    file store in `run.output_dir/mlruns`; metric names as `mlflow_name` writes them."""

    def __init__(self, run: RunConfig, out: Path, config: dict, run_id: str | None, step: int):
        uri = run.tracking.mlflow_tracking_uri
        if uri is None:
            uri = (out / MLFLOW_DIR).as_uri()
            # MLflow 3 keeps the file store working but refuses it unless asked (it prefers a database).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        # A server that does not answer fails this tracker in seconds, not after minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name(run.tracking.mlflow_experiment)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(run.tracking.mlflow_experiment)
            run_id = self.client.create_run(experiment_id, run_name=run.name).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        logged = self.client.get_run(run_id).data.params
        # A parameter cannot change in MLflow: a resumed run adds the keys it did not log before.
        params = [Param(k, v[:6000]) for k, v in flatten(config).items() if k not in logged]
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(run_id, params=params[i:i + 100])
        self.run_id = run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(mlflow_name(k), v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandB:
    """One W&B run in `run.tracking.wandb_project`, offline (kept in `run.output_dir/wandb/`) unless an
    account is configured or `run.tracking.wandb_mode` says `online`."""

    def __init__(self, run: RunConfig, out: Path, config: dict, run_id: str | None, step: int):
        import wandb

        t = run.tracking
        mode = t.wandb_mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        (out / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        # console="off": W&B would wrap stdout, and Ray Train's print then doubles every line.
        self.run = wandb.init(project=t.wandb_project, entity=t.wandb_entity, name=run.name, id=run_id,
                              resume="allow", dir=str(out), mode=mode, config=config,
                              settings=wandb.Settings(console="off", silent=True))
        self.run_id = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """The trackers of `run.loggers` (`jsonl` is `metrics.jsonl`, written by the caller), opened at `step`
    (the checkpoint's, on a resume) with `config` (the resolved config) as parameters."""

    def __init__(self, run: RunConfig, config: dict, step: int = 0):
        self.out = Path(run.output_dir)
        ids_path = self.out / IDS_FILE
        ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
        self.open = {}
        for name in dict.fromkeys(run.loggers):
            if name in TRACKERS:
                try:
                    self.open[name] = TRACKERS[name](run, self.out, config, ids.get(name), step)
                    ids[name] = self.open[name].run_id
                except Exception as e:
                    self._report(name, e)
        if self.open:
            self.out.mkdir(parents=True, exist_ok=True)
            ids_path.write_text(json.dumps(ids, indent=2))

    def _report(self, name: str, error: Exception) -> None:
        self.open.pop(name, None)
        say(f"[train] {name} logger dropped, the run goes on (metrics.jsonl is unaffected): {type(error).__name__}: {error}")

    def log(self, record: dict) -> None:
        values = scalars(record)
        for name, tracker in list(self.open.items()):
            try:
                tracker.log(values, int(record["step"]))
            except Exception as e:
                self._report(name, e)

    def close(self) -> None:
        for name, tracker in list(self.open.items()):
            try:
                tracker.close()
            except Exception as e:
                self._report(name, e)
