"""Weight sync from a trainer to rollout actors in buckets: through the Ray object store, and by
broadcast over a weight group (gloo here, NCCL on GPUs)."""

from __future__ import annotations

import pytest
import ray
import torch

from actors.rollout import RolloutActors, start_rollout_actors
from raytrain.config import parse_config
from raytrain.config.sections import SamplingConfig
from raytrain.engines.base import make_engine
from raytrain.models.loading import load_processor, sync_state
from raytrain.models.tiny import build_tiny_model
from raytrain.weight_sync.protocol import buckets
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests.conftest import config_dict


@pytest.mark.slow
def test_push_weights_to_actors_in_buckets(tiny_model_dir, tmp_path, ray_local, media_prompts):
    raw = config_dict(tiny_model_dir, tmp_path / "manifest.parquet", tmp_path / "run")
    raw["rollout"].update(num_actors=2, num_cpus=0.5)
    cfg = parse_config(raw)
    actors = start_rollout_actors(cfg.model, cfg.rollout)
    engines = RolloutActors(actors)
    try:
        state = sync_state(build_tiny_model(load_processor(cfg.model), seed=1))
        bucket_bytes = 256 << 10
        assert len(list(buckets(state, bucket_bytes))) > 3
        push_weights(engines, state, version=1, bucket_bytes=bucket_bytes)
        assert ray.get([a.version.remote() for a in actors]) == [1, 1]

        # A mismatched sync fails when announced, before any actor loads a tensor.
        bad = {**state, "model.not_a_layer.weight": torch.zeros(2)}
        with pytest.raises(ray.exceptions.RayTaskError, match="unexpected \\['model.not_a_layer.weight'\\]"):
            push_weights(engines, bad, version=2, bucket_bytes=bucket_bytes)
        assert ray.get([a.version.remote() for a in actors]) == [1, 1]
        push_weights(engines, state, version=2, bucket_bytes=bucket_bytes)
        assert ray.get([a.version.remote() for a in actors]) == [2, 2]

        # By broadcast: this process is rank 0 of a group with both actors' engines.
        group = open_weight_group(engines, "gloo", timeout_s=60.0)
        assert group.address.world_size == 3
        other = sync_state(build_tiny_model(load_processor(cfg.model), seed=2))
        push_weights(engines, other, version=3, bucket_bytes=bucket_bytes, group=group)
        assert ray.get([a.version.remote() for a in actors]) == [3, 3]
        with pytest.raises(ray.exceptions.RayTaskError, match="unexpected \\['model.not_a_layer.weight'\\]"):
            push_weights(engines, bad, version=4, bucket_bytes=bucket_bytes, group=group)
        # The actors serve exactly the broadcast weights: greedy answers equal an engine given them here.
        local = make_engine(cfg.model, cfg.rollout)
        push_weights(LocalEngines([local]), other, version=3)
        prompts = media_prompts[1:]  # a video and an image
        greedy = SamplingConfig(group_size=1, max_new_tokens=12)
        expected = [[s.token_ids for s in g] for g in local.generate(prompts, greedy, greedy=True)]
        for actor in actors:
            got = ray.get(actor.generate.remote(prompts, greedy, True))
            assert [[s.token_ids for s in g] for g in got] == expected
            assert {s.version for g in got for s in g} == {3}
    finally:
        for a in actors:
            ray.kill(a)
