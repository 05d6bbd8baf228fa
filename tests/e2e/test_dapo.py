"""End-to-end runs on local Ray: two DeepSpeed workers, a rollout actor (or colocated rollouts) and a reward
actor, for real."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from raytrain.config import parse_config
from raytrain.data.manifest import read_manifest
from raytrain.train.checkpoint import MODEL_DIR, TrainerState, latest_checkpoint
from raytrain.train.launch import STORAGE_DIR, train
from tests.helpers.dapo_runs import (
    assert_resumes_one_step,
    assert_weights_changed,
    dapo_config,
    train_breaking,
    trained_every_prompt_once,
)
from tests.helpers.runs import kill_one, metrics_records

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


def test_colocated_dapo_generates_with_the_live_module_and_syncs_nothing(base_config_dict, warm_model_dir, ray_local):
    # Each worker generates with its own DeepSpeed module (ZeRO-2); its micro-batches are packed by a token
    # budget (a few rows each: the prompts are ~50-60 tokens, the responses up to 16).
    raw = {**base_config_dict, "model": {**base_config_dict["model"], "path": str(warm_model_dir)},
           "rollout": {**base_config_dict["rollout"], "colocate": True},
           "train": {**base_config_dict["train"], "total_steps": 2, "checkpoint_every": 2, "max_tokens_per_micro_batch": 256}}
    cfg = parse_config(raw)
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


def _kill_a_worker_then_the_rollout_actor(killed: dict):
    """After the first checkpoint, kill a training worker; once training resumed and checkpointed
    again, kill the rollout actor (Ray restarts it with its initial weights)."""

    def breaker(step: int) -> bool:
        if "worker" not in killed:
            killed["worker"] = (kill_one("ray::RayTrainWorker"), step)
        elif step > killed["worker"][1]:
            killed["rollout actor"] = kill_one("ray::RolloutActor")
            return True
        return False

    return breaker


def test_async_killed_worker_and_rollout_actor_resume_from_checkpoint_training_every_prompt_once(
        base_config_dict, warm_model_dir, ray_local):
    # Asynchronous one-step-off rollouts (`rollout.mode: async`, k = 1): each rank submits its next step's
    # first round before it trains, so at every checkpoint prompts are in flight, and both kills catch
    # generate calls and syncs overlapping. (The synchronous resume is tested above; the synchronous step
    # is the same loop without the calls submitted ahead.)
    # ZeRO-2: ZeRO-3's resume is tested above, and its per-step gathers and checkpoints here cost a minute of CI.
    # Six steps: a resumed step takes about a second here, and the rollout actor must still be alive when
    # the killer sees the resumed run's first checkpoint (with four, the run sometimes ended first).
    raw = dapo_config(base_config_dict, warm_model_dir, total_steps=6, checkpoint_every=1, max_failures=3, zero_stage=2)
    raw["rollout"] = {**raw["rollout"], "mode": "async"}
    raw["algorithm"] = {**raw["algorithm"], "max_staleness": 1}
    # Enough data that dynamic sampling cannot run the 16-row split dry before the last step.
    raw["data"] = {**raw["data"], "epochs": 6}
    cfg = parse_config(raw)
    killed = {}
    train_breaking(cfg, _kill_a_worker_then_the_rollout_actor(killed))
    assert killed.get("worker", (None,))[0] and killed.get("rollout actor"), f"not everything was killed: {killed}"
    # Exactly once over the six steps; under async rollouts the prompts in flight at a checkpoint are
    # among those drawn again after the restart.
    _, final = trained_every_prompt_once(cfg, 6)
    # No step trained a sample more than one version old (over every rank), and steps did train on
    # samples generated while the step before trained; the restarted rollout actor got the
    # checkpoint's weights back before it generated again (its initial ones would be too old).
    assert all(final[s]["rollout_staleness_max"] <= 1 for s in range(1, 7)), [final[s]["rollout_staleness_max"] for s in final]
    assert any(final[s]["rollout_staleness_max"] == 1 for s in range(2, 7))
    assert all(final[s]["rollout_version"] >= s - 2 for s in range(1, 7))


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
