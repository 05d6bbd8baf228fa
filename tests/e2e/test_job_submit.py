"""A training job, unchanged, through `ray start --head` + `ray job submit` (what a cluster user runs): PRPO
with LoRA and its KL term, so the run also covers paragraph advantages, adapter-only weight sync and the
reference policy."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prpo_job_under_ray_job_submit(base_config_dict, warm_model_dir, tmp_path):
    ray.shutdown()  # the head node started here must be the only Ray on the machine
    raw = {**base_config_dict,
           "model": {**base_config_dict["model"], "path": str(warm_model_dir), "lora": {"enabled": True, "r": 8, "alpha": 16}},
           "reward": {**base_config_dict["reward"], "weights": {**base_config_dict["reward"]["weights"], "paragraph": 1.0}},
           "algorithm": {**base_config_dict["algorithm"], "kl_coef": 0.01, "prpo_outcome_weight": 0.5, "dynamic_sampling": False},
           "train": {**base_config_dict["train"], "total_steps": 1}}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(json.loads(json.dumps(raw, default=str))))

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(bin_dir / "ray")
    dashboard_port = _free_port()
    # Short socket paths: Unix sockets under pytest's deep tmp folders exceed the 107-byte limit.
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    subprocess.run(
        [ray_cli, "start", "--head", f"--port={_free_port()}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", "--num-cpus=8", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        check=True, env=env, capture_output=True, timeout=180,
    )
    submit = [ray_cli, "job", "submit", f"--address=http://127.0.0.1:{dashboard_port}", f"--working-dir={REPO}", "--",
              "python", "-m", "jobs.prpo", "--config", str(config), "--no-eval"]
    try:
        for _ in range(30):
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=900)
            # The head's job agent comes up a little after `ray start` returns.
            if "No available agent to submit job" not in job.stdout + job.stderr:
                break
            time.sleep(2)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    log = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in log, log[-5000:]
    final = Path(raw["run"]["output_dir"]) / "final"
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists(), log[-5000:]
    records = [json.loads(line) for line in (Path(raw["run"]["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]
    assert records[0]["kl"] >= 0.0 and records[0]["time/weight_sync_s"] > 0
    assert 0.0 < records[0]["reward/paragraph"] <= 1.0 and records[0]["loss"] != 0.0
