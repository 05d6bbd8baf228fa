"""Weight sync from a trainer to rollout actors through the Ray object store, in buckets."""

from __future__ import annotations

import pytest
import ray
import torch

from actors.rollout import push_weights, start_rollout_actors
from raytrain.config import parse_config
from raytrain.models import load_processor, sync_state
from raytrain.tiny_model import build_tiny_model
from raytrain.weight_sync import buckets
from tests.conftest import config_dict


@pytest.mark.slow
def test_push_weights_to_actors_in_buckets(tiny_model_dir, tmp_path, ray_local):
    raw = config_dict(tiny_model_dir, tmp_path / "manifest.parquet", tmp_path / "run")
    raw["rollout"].update(num_actors=2, num_cpus=0.5)
    cfg = parse_config(raw)
    actors = start_rollout_actors(cfg.model, cfg.rollout)
    try:
        state = sync_state(build_tiny_model(load_processor(cfg.model), seed=1))
        bucket_bytes = 256 << 10
        assert len(list(buckets(state, bucket_bytes))) > 3
        push_weights(actors, state, version=1, bucket_bytes=bucket_bytes)
        assert ray.get([a.version.remote() for a in actors]) == [1, 1]

        # A mismatched sync fails when announced, before any actor loads a tensor.
        bad = {**state, "model.not_a_layer.weight": torch.zeros(2)}
        with pytest.raises(ray.exceptions.RayTaskError, match="unexpected \\['model.not_a_layer.weight'\\]"):
            push_weights(actors, bad, version=2, bucket_bytes=bucket_bytes)
        assert ray.get([a.version.remote() for a in actors]) == [1, 1]
        push_weights(actors, state, version=2, bucket_bytes=bucket_bytes)
        assert ray.get([a.version.remote() for a in actors]) == [2, 2]
    finally:
        for a in actors:
            ray.kill(a)
