"""The vLLM engine under `rollout.mode: async` (raytrain.engines.vllm_engine): a sync that arrives while it
generates is staged in the engine's process and swapped into vLLM between two generate calls, so every
call is served by one weight version and the trainer never waits for a rollout to finish a sync."""

from __future__ import annotations

import threading

import pytest

from raytrain.config.sections import RolloutConfig
from raytrain.engines.transformers_engine import TransformersEngine
from raytrain.models.loading import sync_state
from raytrain.models.tiny import build_tiny_model
from raytrain.weight_sync.group import GroupAddress
from raytrain.weight_sync.protocol import buckets, tensor_spec
from raytrain.weight_sync.sender import LocalEngines, push_weights
from tests.helpers.engine_checks import greedy_tokens

BUCKET_BYTES = 256 << 10  # the tiny model's ~2 MB go in several buckets


@pytest.fixture(scope="module")
def rollout_cfg():
    return RolloutConfig(
        engine="vllm", mode="async",
        sampling={"group_size": 2, "temperature": 1.0, "max_new_tokens": 8},
        vllm={"max_model_len": 256, "enforce_eager": True, "cpu_kvcache_gb": 1},
    )


@pytest.fixture(scope="module")
def engine(model_cfg, rollout_cfg):
    from raytrain.engines.vllm_engine import VLLMEngine

    return VLLMEngine(model_cfg, rollout_cfg)


def test_a_staged_sync_is_served_only_once_finished(engine, family, model_cfg, prompts, rollout_cfg):
    sampling = rollout_cfg.sampling
    before = greedy_tokens(engine, prompts, sampling)
    new = sync_state(build_tiny_model(family.processor, seed=1))
    engine.begin_update(engine.version + 1, tensor_spec(new))
    for bucket in buckets(new, BUCKET_BYTES):
        engine.load_bucket(bucket)
    # Every bucket arrived, none is served yet: generation goes on with the old weights and version.
    assert greedy_tokens(engine, prompts, sampling) == before
    assert {s.version for g in engine.generate(prompts[:2], sampling) for s in g} == {0}
    assert engine.finish_update() == 1
    hf = TransformersEngine(model_cfg)
    push_weights(LocalEngines([hf]), new, version=1, bucket_bytes=BUCKET_BYTES)
    after = greedy_tokens(engine, prompts, sampling)
    assert after == greedy_tokens(hf, prompts, sampling) and after != before


def test_a_sync_during_generation_lands_between_two_calls(engine, family, prompts, rollout_cfg):
    served = engine.version
    started, calls = threading.Event(), []

    def generating():  # back-to-back calls, as a rollout actor's queue of generate calls
        while len(calls) < 50 and not (calls and calls[-1] == {served + 1}):
            started.set()
            calls.append({s.version for g in engine.generate(prompts, rollout_cfg.sampling) for s in g})

    thread = threading.Thread(target=generating)
    thread.start()
    started.wait()
    push_weights(LocalEngines([engine]), sync_state(build_tiny_model(family.processor, seed=2)), served + 1, BUCKET_BYTES)
    thread.join()
    # Each call was served by one version, and the versions only went forward.
    assert all(len(v) == 1 for v in calls), calls
    order = [v.copy().pop() for v in calls]
    assert order == sorted(order) and order[-1] == served + 1, order


def test_a_weight_group_is_refused(engine):
    # A broadcast would go straight into vLLM's workers, which may be generating.
    with pytest.raises(ValueError, match="stages weights that come through the object store"):
        engine.join_weight_group(GroupAddress("127.0.0.1", 29500, 2, "gloo", 5.0), 1)
