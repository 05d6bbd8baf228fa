"""End-to-end runs on local Ray: two DeepSpeed workers, a rollout actor (or colocated rollouts) and a reward
actor, for real."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from raytrain.config import parse_config
from raytrain.data.manifest import read_manifest
from raytrain.train.checkpoint import MODEL_DIR, TrainerState, latest_checkpoint
from raytrain.train.launch import FINAL_DIR, STORAGE_DIR, train
from tests.helpers.dapo_runs import assert_resumes_one_step, assert_weights_changed, dapo_config
from tests.helpers.runs import metrics_records

pytestmark = pytest.mark.slow


def _pooled(raw: dict) -> dict:
    # Two rollout actors, one shared pool: both ranks' calls spread over both (and both are synced).
    return {**raw, "rollout": {**raw["rollout"], "num_actors": 2}}


def test_dapo_trains_syncs_checkpoints_and_resumes(base_config_dict, warm_model_dir, ray_local):
    cfg = parse_config(_pooled(dapo_config(base_config_dict, warm_model_dir, total_steps=2, checkpoint_every=1)))
    final = train(cfg)

    # The weights changed and the export loads as an ordinary Hugging Face model.
    assert_weights_changed(warm_model_dir, final, cfg.model)

    # Metrics were reported each step, and step 2 was rolled out by the weights of step 1.
    records = metrics_records(cfg.run.output_dir)
    categories = set(read_manifest(cfg.data.manifest)["category"].to_pylist())
    assert [r["step"] for r in records] == [1, 2]
    assert [r["rollout_version"] for r in records] == [0, 1]
    for r in records:
        assert -2.0 <= r["reward/total"] <= 1.0
        assert 0.0 <= r["reward/accuracy"] <= 1.0
        assert r["groups_kept"] + r["groups_dropped"] == r["groups_drawn"]
        assert r["responses"] == r["groups_drawn"] * cfg.rollout.sampling.group_size
        # Waiting for prompts and for scores are parts of the rollout phase.
        assert 0.0 <= r["time/data_s"] and 0.0 <= r["time/reward_s"] and r["time/data_s"] + r["time/reward_s"] <= r["time/rollout_s"]
        per_category = {k.rsplit("/", 1)[1]: v for k, v in r.items() if k.startswith("reward/accuracy/")}
        assert per_category and set(per_category) <= categories
        assert all(0.0 <= v <= 1.0 for v in per_category.values())

    # The first record says where the time to it went; the phases add up to the whole.
    phases = [records[0][f"startup/{k}_s"] for k in ("ray", "actors_and_data", "train_workers", "model", "first_step")]
    assert all(p >= 0 for p in phases) and sum(phases) == pytest.approx(records[0]["startup/total_s"], abs=1e-4)
    assert records[0]["startup/train_workers_s"] > 0 and not any(k.startswith("startup/") for k in records[1])

    # Every training run ends with its curves, an image a person can open.
    with Image.open(Path(cfg.run.output_dir) / "training.png") as image:
        assert image.size[0] > 400 and image.size[1] > 200

    # The checkpoint holds DeepSpeed state, the export and the data position.
    ckpt = latest_checkpoint(Path(cfg.run.output_dir) / STORAGE_DIR)
    state = TrainerState.load(ckpt)
    assert (state.step, state.version) == (2, 2)
    assert (ckpt / "deepspeed").is_dir() and (ckpt / MODEL_DIR / "model.safetensors").is_file()
    drawn = sum(r["groups_drawn"] for r in records)
    assert len(state.consumed) == drawn == len(set(state.consumed))

    # Resuming continues at step 3 with prompts it has not drawn before.
    assert_resumes_one_step(cfg, parse_config(_pooled(dapo_config(base_config_dict, warm_model_dir, total_steps=3, checkpoint_every=1))))


def test_colocated_dapo_on_zero0_generates_with_the_live_module_syncs_nothing_and_resumes(base_config_dict, warm_model_dir,
                                                                                         ray_local):
    # Each worker generates with its own DeepSpeed module, under ZeRO-0 (whole gradients and Adam states on each
    # rank, the setting for small runs that colocation is for); its micro-batches are packed by a token budget
    # (a few rows each: the prompts are ~50-60 tokens, the responses up to 16).
    def config(steps: int):
        return parse_config({**base_config_dict, "model": {**base_config_dict["model"], "path": str(warm_model_dir)},
                             "rollout": {**base_config_dict["rollout"], "colocate": True},
                             "train": {**base_config_dict["train"], "total_steps": steps, "checkpoint_every": 2,
                                       "zero_stage": 0, "max_tokens_per_micro_batch": 256}})

    cfg = config(2)
    final = train(cfg)

    records = metrics_records(cfg.run.output_dir)
    assert [r["step"] for r in records] == [1, 2]
    assert [r["rollout_version"] for r in records] == [0, 1]
    for r in records:
        assert r["weight_sync/bytes"] == 0 and r["time/weight_sync_s"] == 0.0
        # The log-probs recorded at rollout are the trainer's forward on the same tokens before the update
        # (step 2 too, after step 1 changed the weights): the importance ratio starts at 1.
        assert abs(r["approx_kl"]) < 1e-4 and r["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
        assert r["micro_batches"] >= 2 and 0.0 <= r["padding_fraction"] < 1.0
    assert_weights_changed(warm_model_dir, final)
    state = TrainerState.load(latest_checkpoint(Path(cfg.run.output_dir) / STORAGE_DIR))
    assert (state.step, state.version) == (2, 2)
    # ZeRO-0's checkpoint (the optimizer states in each rank's model-states file) resumes.
    assert_resumes_one_step(cfg, config(3))


def test_async_with_no_staleness_trains_exactly_as_sync(base_config_dict, warm_model_dir, ray_local, tmp_path):
    # Seeded rollouts (`rollout.sampling.seed`) and one training worker fed in row order (`data.preserve_order`):
    # the run is reproducible, so `rollout.mode: async` with k = 0 must take the synchronous steps exactly.
    # (Async with k = 1 under kills is the chaos run's, tests/e2e/test_chaos.py.)
    def run(mode: str) -> list[dict]:
        raw = dapo_config({**base_config_dict, "run": {**base_config_dict["run"], "output_dir": str(tmp_path / mode)}},
                          warm_model_dir, num_workers=1, total_steps=2, checkpoint_every=2, zero_stage=2)
        raw["data"] = {**raw["data"], "preserve_order": True}
        raw["rollout"] = {**raw["rollout"], "mode": mode,
                          "sampling": {**raw["rollout"]["sampling"], "seed": 7}}
        raw["algorithm"] = {**raw["algorithm"], "max_staleness": 0}
        cfg = parse_config(raw)
        train(cfg)
        return metrics_records(cfg.run.output_dir)

    same = ("loss", "reward/total", "response_tokens_mean", "groups_drawn", "groups_kept", "rollout_version", "ratio_mean")
    sync, not_ahead = run("sync"), run("async")
    assert [r["step"] for r in sync] == [1, 2]
    assert [{k: r[k] for k in same} for r in not_ahead] == [{k: r[k] for k in same} for r in sync]
    assert sync[0]["loss"] != sync[1]["loss"]  # the steps trained on different groups, not on nothing
    # The same weights at the end, bit for bit (the records round to 6 digits).
    exported = [load_file(tmp_path / mode / FINAL_DIR / "model.safetensors") for mode in ("sync", "async")]
    assert exported[0].keys() == exported[1].keys()
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
    assert_weights_changed(warm_model_dir, tmp_path / "sync" / FINAL_DIR)


def test_undecodable_media_are_skipped_counted_and_listed(warm_run):
    cfg, _, bad_paths = warm_run  # the warm-up run's manifest mixes in three undecodable files
    state = TrainerState.load(latest_checkpoint(Path(cfg.run.output_dir) / STORAGE_DIR))
    assert {s["path"] for s in state.skipped} == set(bad_paths)
    assert all(s["reason"] for s in state.skipped)
    # Each epoch draws them again under new keys, and every draw is recorded once.
    keys = [s["key"] for s in state.skipped]
    assert len(keys) == len(set(keys))
    # Nothing usable was dropped: the consumed keys are exactly the rows trained on plus the skipped draws.
    records = metrics_records(cfg.run.output_dir)
    assert len(state.consumed) == len(set(state.consumed)) == sum(r["prompts"] for r in records) + len(keys)
    assert set(keys) <= set(state.consumed)
    assert records[-1]["media_skipped"] == len(keys)
