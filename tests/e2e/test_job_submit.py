"""A training job, unchanged, through `ray start --head` + `ray job submit` (what a cluster user runs): PRPO
with LoRA and its KL term, so the run also covers paragraph advantages, adapter-only weight sync and the
reference policy. The same run is watched as a user would: a real Prometheus scrapes the head node's
metrics endpoint through Ray's service-discovery file (`monitoring/prometheus.yml`), and the job logs to
TensorBoard, MLflow and W&B (offline); each must hold what metrics.jsonl holds."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from raytrain.config import load_config
from raytrain.observe.ray_metrics import METRICS, step_series
from raytrain.observe.trackers import MLFLOW_DIR, flatten, mlflow_name
from tests.helpers.runs import metrics_records
from tests.helpers.trackers import history, run_files, tensorboard_scalars

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_node(temp_dir: str) -> None:
    """Only this test's Ray node: the processes whose command line names its temp dir (`ray stop` would stop
    every Ray on the machine)."""
    mine = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    for p in mine:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(mine, timeout=15)
    for p in alive:
        p.kill()


def _prometheus(temp_dir: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    """Prometheus on a loopback port with its own data folder, configured by the shipped file pointed at
    this node's service-discovery file and scraping every second."""
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [f"{temp_dir}/prom_metrics_service_discovery.json"]
    config["scrape_configs"][0]["file_sd_configs"][0]["refresh_interval"] = "1s"
    (data_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(["prometheus", f"--config.file={data_dir / 'prometheus.yml'}", f"--storage.tsdb.path={data_dir / 'tsdb'}",
                             f"--web.listen-address={address}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://{address}"


def _query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())["data"]["result"]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Prometheus (`apt-get install prometheus`; make test installs it)")
def test_prpo_job_under_ray_job_submit_watched_by_prometheus_and_trackers(base_config_dict, warm_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the job's MLflow file store back
    ray.shutdown()  # the head node started here must be the only Ray this process talks to
    raw = {**base_config_dict,
           "run": {**base_config_dict["run"], "name": "job-submit", "loggers": ["jsonl", "tensorboard", "mlflow", "wandb"]},
           "model": {**base_config_dict["model"], "path": str(warm_model_dir), "lora": {"enabled": True, "r": 8, "alpha": 16}},
           # The warm-up model's responses differ only in their answer: a group whose answers all agree has a
           # constant paragraph pool and zero advantages. Groups of 8 and dynamic sampling (the base config's,
           # 3 rounds) keep only groups whose answers differ, so no step's loss is 0 by chance (one was, in CI).
           "rollout": {**base_config_dict["rollout"], "sampling": {**base_config_dict["rollout"]["sampling"], "group_size": 8}},
           "reward": {**base_config_dict["reward"], "weights": {**base_config_dict["reward"]["weights"], "paragraph": 1.0}},
           "algorithm": {**base_config_dict["algorithm"], "kl_coef": 0.01, "prpo_outcome_weight": 0.5},
           "train": {**base_config_dict["train"], "total_steps": 2, "checkpoint_every": 2}}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(json.loads(json.dumps(raw, default=str))))

    bin_dir = Path(sys.executable).parent
    # The node's own token: `ray start` with token auth does not make one (a fresh machine has no
    # ~/.ray/auth_token until some `ray.init` or `ray get-auth-token --generate` writes it).
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_metrics_report_interval_ms": "1000"}  # workers push their metrics to the node's endpoint every second
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    for key in ("RAY_ADDRESS", "WANDB_API_KEY", "WANDB_MODE"):
        env.pop(key, None)
    ray_cli = str(bin_dir / "ray")
    dashboard_port = _free_port()
    # Short socket paths: Unix sockets under pytest's deep tmp folders exceed the 107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    submit = [ray_cli, "job", "submit", f"--address=http://127.0.0.1:{dashboard_port}", f"--working-dir={REPO}", "--",
              "python", "-m", "jobs.prpo", "--config", str(config), "--no-eval"]
    prometheus = None
    try:
        subprocess.run(
            # Every port its own: another Ray on this machine may hold the defaults (the job agent's 52365, say).
            [ray_cli, "start", "--head", f"--port={_free_port()}", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard_port}", f"--metrics-export-port={_free_port()}", "--num-cpus=8",
             f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
             f"--runtime-env-agent-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
             f"--temp-dir={temp_dir}", "--disable-usage-stats"],
            check=True, env=env, capture_output=True, timeout=180,
        )
        prometheus, prometheus_url = _prometheus(temp_dir, tmp_path)
        for _ in range(30):
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
            # The head's job agent comes up a little after `ray start` returns.
            if "No available agent to submit job" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        log = job.stdout + job.stderr
        assert job.returncode == 0 and "succeeded" in log, log[-5000:]
        out = Path(raw["run"]["output_dir"])
        records = metrics_records(out)
        last = records[-1]

        # Prometheus holds every figure of the last step, with the run's tags and the value of metrics.jsonl.
        expected = {(METRICS[name].exported, tuple(sorted(tags.items()))): value for name, tags, value in step_series(last)}
        found = {}
        for _ in range(20):
            # The last sample of each series: once the job's processes exit, their series go stale.
            series = _query(prometheus_url, 'last_over_time({__name__=~"ray_deepfake_rl_.+", run="job-submit", algorithm="prpo"}[15m])')
            found = {(s["metric"]["__name__"], tuple(sorted((k, v) for k, v in s["metric"].items() if k in ("component", "category", "outcome", "phase", "stat")))):
                     float(s["value"][1]) for s in series}
            if all(found.get(k) == pytest.approx(v, rel=1e-6) for k, v in expected.items()):
                break
            time.sleep(1)
        assert {k: found.get(k) for k in expected} == pytest.approx(expected, rel=1e-6)
        # The actors' own counters: the reward actor scored every response the rollout actor generated.
        def total(name: str) -> float:
            (result,) = _query(prometheus_url, f'sum(last_over_time({name}{{run="job-submit", algorithm="prpo"}}[15m]))')
            return float(result["value"][1])

        responses = sum(r["responses"] for r in records)
        assert total("ray_deepfake_rl_rollout_responses_total") == total("ray_deepfake_rl_reward_scored_total") == responses
        assert total("ray_deepfake_rl_rollout_generated_tokens_total") == pytest.approx(sum(r["response_tokens_mean"] * r["responses"] for r in records))
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        _stop_node(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)

    final = out / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists(), log[-5000:]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["kl"] >= 0.0 and r["time/weight_sync_s"] > 0 and r["weight_sync/bytes"] > 0 for r in records)
    assert all(0.0 < r["reward/paragraph"] <= 1.0 and r["loss"] != 0.0 for r in records), records
    assert (out / "training.png").is_file()
    assert log.count("[train] step 1/2 |") == 1, log[-5000:]  # each line once

    # The trackers hold every scalar of metrics.jsonl, and MLflow the resolved config.
    by_step = {r["step"]: r for r in records}
    for key, values in tensorboard_scalars(out).items():
        assert values == pytest.approx({s: r[key] for s, r in by_step.items() if key in r}, rel=1e-6), key
    assert set(tensorboard_scalars(out)) == {k for r in records for k in r}
    client = MlflowClient((out / MLFLOW_DIR).as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    # MLflow keeps each metric's latest value: a category's accuracy missing from the last step keeps its earlier one.
    latest = {mlflow_name(k): float(v) for r in records for k, v in r.items()}
    assert run.data.metrics == pytest.approx(latest, rel=1e-9)
    assert run.data.params["run.name"] == "job-submit" and run.data.params["algorithm.name"] == "prpo"
    # jobs.prpo sets algorithm.name itself, over the config file's.
    resolved = load_config(config, ["algorithm.name=prpo"]).with_absolute_paths().model_dump(mode="json")
    assert run.data.params == {k: v[:6000] for k, v in flatten(resolved).items()}
    (wandb_file,) = run_files(out)
    assert [{k: row[k] for k in r} for row, r in zip(history(wandb_file), records)] == records
