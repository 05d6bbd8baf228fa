"""`rollout.mode: async` on the trainer's side without Ray: which steps submit rollouts ahead, and the
staleness every rank's oldest sample adds up to in the step's metrics."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from raytrain.config import parse_config
from raytrain.train.algorithms import ALGORITHMS
from raytrain.train.checkpoint import TrainerState
from raytrain.train.experience import RolloutsAhead, least_loaded
from raytrain.train.metrics import step_metrics
from tests.conftest import config_dict


@pytest.mark.parametrize("mode, k, depth", [("sync", 0, None), ("sync", 2, None), ("async", 0, None), ("async", 1, 1), ("async", 3, 3)])
def test_rounds_go_ahead_only_in_async_mode_with_k_above_zero(tmp_path, mode, k, depth):
    raw = config_dict(tmp_path / "model", tmp_path / "manifest.parquet", tmp_path / "run")
    raw["rollout"]["mode"] = mode
    raw["algorithm"]["max_staleness"] = k
    ahead = RolloutsAhead.for_config(parse_config(raw))
    # k = 0: no queue at all, so async runs the synchronous step itself (the same losses on the same seeds).
    assert (ahead.depth if ahead is not None else None) == depth
    if ahead is not None:
        assert len(ahead) == 0


def test_staleness_max_is_over_every_ranks_oldest_sample(monkeypatch):
    # Rank 0 trained on samples of versions 3 and 4 (its own `rollout_version` 3); the other rank's oldest is 2;
    # the step trained version 4 (the state holds 5 after it).
    stats = {"rollout_version": 3, "rollout_version_min": 3, "loss": 0.5, "ranks_trained": 1.0, "loss_sums": {}, "loss_means": {},
             "responses": 4, "groups_drawn": 2, "groups_dropped": 0, "groups_kept": 2, "generation_rounds": 1,
             "groups_nonfinite": 0, "response_tokens_sum": 8, "truncated_sum": 0, "reward_sums": {},
             "accuracy_by_category": {}, "responses_by_category": {}}
    other = {**stats, "rollout_version": 2, "rollout_version_min": 2, "media_skipped": 0}
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, local: out.__setitem__(slice(None), [local, other]))
    metrics = step_metrics(ALGORITHMS["dapo"], TrainerState(step=5, version=5), stats, 8.0, 0)
    assert (metrics["rollout_version"], metrics["rollout_staleness"], metrics["rollout_staleness_max"]) == (3, 1, 2)
    assert metrics["groups_drawn"] == 4  # the other keys are still summed


def test_generate_calls_go_to_the_least_loaded_actor_of_the_shared_pool():
    # Ties go to the rank's own actor first, then the ones after it: two ranks of two calls each on a pool
    # of three actors use all three.
    assert least_loaded([0, 0, 0], rank=0) == 0 and least_loaded([0, 0, 0], rank=1) == 1
    assert least_loaded([1, 0, 0], rank=0) == 1 and least_loaded([0, 1, 0], rank=1) == 2
    assert least_loaded([2, 1, 1], rank=2) == 2 and least_loaded([1, 1, 0], rank=4) == 2
    assert least_loaded([5], rank=3) == 0
