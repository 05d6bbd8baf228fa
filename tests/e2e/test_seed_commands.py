"""The seed's command lines (README "seed command -> this project's command") on the tiny setup:
`jobs.sft --deepspeed ds_config.json --max_samples N --num_epochs 1` with ZeRO-Offload's CPU Adam,
stopped after one step and resumed; `jobs.prepare_data` writing test.jsonl; `jobs.evaluate --data
test.jsonl --name baseline`, `--tiktok DIR --label fake --output FILE.json` and an unlabelled folder.
(`jobs.busterx --stage 1|all` runs in tests/e2e/test_recipes.py; its placement in test_placement_jobs.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from jobs import evaluate, prepare_data, sft
from raytrain.train.checkpoint import TrainerState, latest_checkpoint
from raytrain.train.launch import STORAGE_DIR
from tests.helpers.runs import metrics_records

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TINY_EVAL = ["data.num_frames=8", "data.max_pixels=3136", "data.min_pixels=784", "data.decode_concurrency=1",
             "rollout.sampling.max_new_tokens=16", "evaluation.num_actors=1", "evaluation.bootstrap_resamples=100"]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_sft_with_the_seeds_ds_config_and_cpu_offload_resumes(base_config_dict, tmp_path, ray_local, capsys):
    raw = {**base_config_dict, "algorithm": {"name": "sft"}, "train": {**base_config_dict["train"], "num_workers": 1},
           "data": {**base_config_dict["data"], "decode_concurrency": 1}}
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump(raw))
    # 4 rows, 1 worker x 2 prompts: two steps of two passes each, the Adam states in host memory.
    args = ["--config", str(config), "--deepspeed", str(REPO / "jobs/configs/ds_config.json"), "--max_samples", "4",
            "--no-eval", *_sets(["train.offload_optimizer=cpu", "train.gradient_accumulation_steps=2"])]
    sft.main([*args, "--set", "train.total_steps=1"])
    storage = Path(raw["run"]["output_dir"]) / STORAGE_DIR
    assert TrainerState.load(latest_checkpoint(storage)).step == 1
    capsys.readouterr()
    sft.main([*args, "--num_epochs", "1"])  # the rest of the epoch: one more step
    out = capsys.readouterr().out
    assert "[run] resuming from" in out and "[train] resumed at step 1" in out
    state = TrainerState.load(latest_checkpoint(storage))
    assert state.step == 2 and len(state.consumed) == 4
    metrics = metrics_records(raw["run"]["output_dir"])
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]


def test_prepare_data_and_the_seeds_evaluate_commands(tiny_model_dir, synthetic_dir, tmp_path, ray_local, monkeypatch):
    data = tmp_path / "training_data"
    assert prepare_data.main(["--source", str(synthetic_dir), "--output", str(data), "--max-videos", "100",
                              "--skip-processing"]) == 0
    test_rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    assert test_rows and {r["split"] for r in test_rows} == {"test"} and (data / "train.jsonl").stat().st_size

    monkeypatch.chdir(tmp_path)  # `--name baseline` without --output writes runs/eval/baseline here
    baseline = evaluate.main(["--model", str(tiny_model_dir), "--data", str(data / "test.jsonl"), "--name", "baseline",
                              *_sets([*TINY_EVAL, "data.max_rows=3"])])
    saved = json.loads((tmp_path / "runs/eval/baseline/metrics.json").read_text())
    assert saved["name"] == "baseline" and saved["overall"]["total"] == 3 and saved["labelled"]
    assert baseline["called_fake"]["n"] == saved["overall"]["n"]

    tiktok = tmp_path / "deepfakes"
    tiktok.mkdir()
    for clip in sorted((synthetic_dir / "test" / "fake").rglob("*.mp4"))[:2]:
        shutil.copy(clip, tiktok / clip.name)
    summary = evaluate.main(["--model", str(tiny_model_dir), "--tiktok", str(tiktok), "--label", "fake",
                             "--output", str(tmp_path / "results_tiktok.json"), *_sets(TINY_EVAL)])
    metrics = json.loads((tmp_path / "results_tiktok.json").read_text())
    assert metrics == json.loads((tmp_path / "results_tiktok" / "metrics.json").read_text())
    assert (tmp_path / "results_tiktok" / "predictions.parquet").is_file()
    assert metrics["overall"]["total"] == 2 and metrics["labelled"] and summary["overall"]["confusion"]["matrix"][0] == [0, 0, 0]
    # The same clips without any label: still predicted; only the share called fake (and format) reported.
    unlabelled = evaluate.main(["--model", str(tiny_model_dir), "--tiktok", str(tiktok),
                                "--output", str(tmp_path / "unlabelled.json"), *_sets(TINY_EVAL)])
    assert not unlabelled["labelled"] and unlabelled["overall"]["total"] == 2
    assert unlabelled["overall"]["accuracy"]["value"] is None and unlabelled["called_fake"]["n"] == unlabelled["overall"]["n"]
    # Same model, same clips, same greedy answers: the share called fake is the labelled run's recall.
    assert unlabelled["called_fake"]["value"] == summary["called_fake"]["value"]
    if summary["overall"]["n"] == 2:
        assert summary["called_fake"]["value"] == summary["overall"]["recall"]["value"]
    report = (tmp_path / "unlabelled" / "report.md").read_text()
    assert "Called fake:" in report and "no labels" in report and "Confusion matrix" not in report
