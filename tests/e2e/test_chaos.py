"""Chaos: random kills of every role during one DAPO run on local Ray, then the run's invariants.

A seeded schedule kills a training worker, the rollout actor, the reward actor and the judge actor, one
each, in a random order, each at a random moment after a randomly chosen step's checkpoint. Ray restarts
the actors (`train.actor_restarts`) and Ray Train the worker group (`train.max_failures`) from the last
complete checkpoint; a judge that died meanwhile costs its batch the judge's score (counted as judge
failures), never the run. `make test-chaos` runs this module alone; `make test` runs it too."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

from raytrain.config import parse_config
from raytrain.models.loading import load_policy
from raytrain.train.checkpoint import MODEL_DIR, TrainerState, checkpoint_problem, latest_checkpoint
from raytrain.train.launch import STORAGE_DIR, train
from tests.helpers.runs import kill_one, metrics_records

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

STEPS = 30
ROLES = {"training worker": "ray::RayTrainWorker", "rollout actor": "ray::RolloutActor",
         "reward actor": "ray::RewardScorer", "judge actor": "ray::JudgeActor"}
KILL_WINDOW_S = 900  # the killer gives up after this; the test then fails on the kills it could not make


def _schedule(seed: int) -> list[tuple[str, int, float]]:
    """(role, after the checkpoint of this step, then this many seconds) for each kill, in order."""
    rng = random.Random(seed)
    roles = rng.sample(list(ROLES), len(ROLES))
    steps = sorted(rng.sample(range(2, STEPS - 6), len(roles)))
    return [(role, step, rng.uniform(0.0, 1.5)) for role, step in zip(roles, steps)]


def _killer(storage: Path, schedule, done: threading.Event, killed: list, seed: int) -> None:
    rng = random.Random(seed)
    deadline = time.time() + KILL_WINDOW_S
    pending = list(schedule)
    while pending and not done.is_set() and time.time() < deadline:
        time.sleep(0.1)
        try:
            latest = latest_checkpoint(storage)
            step = TrainerState.load(latest).step if latest is not None else 0
        except (OSError, ValueError):  # a checkpoint still being copied into storage
            continue
        role, after, delay = pending[0]
        if step < after:
            continue
        time.sleep(delay)
        pid = kill_one(ROLES[role], rng)
        if pid is not None:  # else its process is restarting (an earlier kill): try again on the next tick
            killed.append((role, step, pid))
            pending.pop(0)


@pytest.mark.timeout(1500)
def test_random_kills_of_every_role_lose_nothing_and_repeat_nothing(base_config_dict, warm_model_dir, ray_local):
    seed = 20261203
    raw = {**base_config_dict}
    raw["model"] = {**raw["model"], "path": str(warm_model_dir)}
    # Enough rows that dynamic sampling cannot run the 16-row split dry before step 30.
    raw["data"] = {**raw["data"], "epochs": 60, "num_frames": 2}
    raw["reward"] = {**raw["reward"], "weights": {**raw["reward"]["weights"], "thinking": 0.5},
                     "judge": {"model": {"path": str(warm_model_dir), "dtype": "float32"}, "max_new_tokens": 4,
                               "num_cpus": 0.5, "media": {"num_frames": 2, "max_pixels": 3136, "min_pixels": 784}}}
    raw["train"] = {**raw["train"], "total_steps": STEPS, "checkpoint_every": 1, "max_failures": 4, "actor_restarts": 4}
    cfg = parse_config(raw)
    storage = Path(cfg.run.output_dir).resolve() / STORAGE_DIR
    schedule = _schedule(seed)
    done, killed = threading.Event(), []
    killer = threading.Thread(target=_killer, args=(storage, schedule, done, killed, seed))
    killer.start()
    try:
        final = train(cfg)
    finally:
        done.set()
        killer.join()
    assert [k[0] for k in killed] == [s[0] for s in schedule], f"kills made {killed} of the schedule {schedule}"

    # Steps and policy versions only went forward, and the metrics file has one record per step.
    records = metrics_records(cfg.run.output_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert [r["policy_version"] for r in records] == list(range(1, STEPS + 1))
    # Exactly once: the prompts the 30 surviving steps drew are the consumed keys, none twice.
    state = TrainerState.load(latest_checkpoint(storage))
    assert state.step == STEPS and len(state.consumed) == len(set(state.consumed))
    assert sum(r["groups_drawn"] for r in records) == len(state.consumed)

    # Every checkpoint left behind is complete and loads, in step order; the final export loads by name.
    left = sorted(c for c in storage.glob("checkpoint_*") if c.is_dir())
    assert left and all(checkpoint_problem(c) is None for c in left), [(c.name, checkpoint_problem(c)) for c in left]
    steps = [TrainerState.load(c).step for c in left]
    assert steps == sorted(steps) and steps[-1] == STEPS
    for c in left:
        load_policy(cfg.model.model_copy(update={"path": str(c / MODEL_DIR)}))
    AutoModelForImageTextToText.from_pretrained(final, use_safetensors=True)
