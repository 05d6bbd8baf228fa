"""Chaos: random kills of every role during one asynchronous (one-step-off) DAPO run on local Ray, then the
run's invariants.

A seeded schedule kills a training worker, the rollout actor, the reward actor and the judge actor, one
each, in a random order, each at a random moment after a randomly chosen step's checkpoint. Ray restarts
the actors (`train.actor_restarts`) and Ray Train the worker group (`train.max_failures`) from the last
complete checkpoint; a judge that died meanwhile costs its batch the judge's score (counted as judge
failures), never the run. `make test-chaos` runs this module alone; `make test` runs it too."""

from __future__ import annotations

import random
import time

import pytest
from transformers import AutoModelForImageTextToText

from raytrain.config import parse_config
from raytrain.models.loading import load_policy
from raytrain.train.checkpoint import MODEL_DIR, TrainerState, checkpoint_problem
from tests.helpers.dapo_runs import storage_dir, train_breaking, trained_every_prompt_once
from tests.helpers.runs import kill_one

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

STEPS = 30
ROLES = {"training worker": "ray::RayTrainWorker", "rollout actor": "ray::RolloutActor",
         "reward actor": "ray::RewardScorer", "judge actor": "ray::JudgeActor"}
KILL_WINDOW_S = 1200  # the whole run, kills and restarts included, must end within this


def _schedule(seed: int) -> list[tuple[str, int, float]]:
    """(role, after the checkpoint of this step, then this many seconds) for each kill, in order."""
    rng = random.Random(seed)
    roles = rng.sample(list(ROLES), len(ROLES))
    steps = sorted(rng.sample(range(2, STEPS - 6), len(roles)))
    return [(role, step, rng.uniform(0.0, 1.5)) for role, step in zip(roles, steps)]


def _killer(schedule, killed: list, rng: random.Random):
    """`train_breaking`'s breaker: the schedule's next kill once the newest checkpoint has reached its step."""
    pending = list(schedule)

    def breaker(step: int) -> bool:
        role, after, delay = pending[0]
        if step >= after:
            time.sleep(delay)
            pid = kill_one(ROLES[role], rng)
            if pid is not None:  # else its process is restarting (an earlier kill): try again on the next poll
                killed.append((role, step, pid))
                pending.pop(0)
        return not pending

    return breaker


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
    # Asynchronous one-step-off rollouts (k = 1): at every checkpoint a round is in flight, so the kills catch
    # generate calls, scoring and syncs overlapping, and a resume must draw the in-flight prompts again.
    raw["rollout"] = {**raw["rollout"], "mode": "async"}
    raw["algorithm"] = {**raw["algorithm"], "max_staleness": 1}
    cfg = parse_config(raw)
    schedule, killed = _schedule(seed), []
    final = train_breaking(cfg, _killer(schedule, killed, random.Random(seed)), timeout_s=KILL_WINDOW_S)
    assert [k[0] for k in killed] == [s[0] for s in schedule], f"kills made {killed} of the schedule {schedule}"

    # Steps and policy versions only went forward, one record per step; every prompt trained exactly once.
    _, records = trained_every_prompt_once(cfg, STEPS)
    assert [records[s]["policy_version"] for s in range(1, STEPS + 1)] == list(range(1, STEPS + 1))
    # No step trained a sample more than one version old, and steps did train samples generated while the
    # step before trained; a restarted rollout actor got the checkpoint's weights back before it generated
    # again (its initial ones would be too old, and the step would fail).
    staleness = [records[s]["rollout_staleness_max"] for s in range(1, STEPS + 1)]
    assert max(staleness) == 1, staleness

    # Every checkpoint left behind is complete and loads, in step order; the final export loads by name.
    left = sorted(c for c in storage_dir(cfg).glob("checkpoint_*") if c.is_dir())
    assert left and all(checkpoint_problem(c) is None for c in left), [(c.name, checkpoint_problem(c)) for c in left]
    steps = [TrainerState.load(c).step for c in left]
    assert steps == sorted(steps) and steps[-1] == STEPS
    for c in left:
        load_policy(cfg.model.model_copy(update={"path": str(c / MODEL_DIR)}))
    AutoModelForImageTextToText.from_pretrained(final, use_safetensors=True)
