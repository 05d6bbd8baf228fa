"""The vLLM engine (raytrain.engines.vllm_engine) on CPU, full-weight mode, against transformers.

One engine for the whole module (vLLM starts in ~20 s); tests run in file order and the
later ones change its weights, each saying what it expects the engine to serve.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from raytrain.config.sections import ModelConfig, RolloutConfig
from raytrain.models.loading import sync_state
from raytrain.models.logprobs import masked_logprobs
from raytrain.models.tiny import build_tiny_text_model
from raytrain.weight_sync.protocol import buckets
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests.helpers.engine_checks import check_groups, check_unannounced_bucket_refused_without_stalling
from tests_vllm.conftest import hf_greedy

# float32 on both sides; vLLM's CPU kernels (oneDNN GEMMs, its own attention) sum in another
# order than torch: measured gaps here are ~1e-6.
LOGPROB_ATOL = 1e-4
BUCKET_BYTES = 64 << 10  # the tiny model's ~0.4 MB go in several buckets; each embedding alone


@pytest.fixture(scope="module")
def model_cfg(text_model_dir):
    return ModelConfig(path=str(text_model_dir), dtype="float32")


@pytest.fixture(scope="module")
def rollout_cfg():
    return RolloutConfig(
        engine="vllm",
        sampling={"group_size": 4, "temperature": 1.0, "max_new_tokens": 16},
        vllm={"max_model_len": 256, "enforce_eager": True, "cpu_kvcache_gb": 1},
    )


@pytest.fixture(scope="module")
def engine(model_cfg, rollout_cfg):
    from raytrain.engines.vllm_engine import VLLMEngine

    return VLLMEngine(model_cfg, rollout_cfg)


@pytest.fixture(scope="module")
def reference(text_model_dir):
    """The weights the engine starts with, in transformers."""
    return AutoModelForCausalLM.from_pretrained(text_model_dir, dtype=torch.float32).eval()


def _greedy(engine, prompts, sampling):
    return [g[0].token_ids for g in engine.generate(prompts, sampling, greedy=True)]


def _hf_greedy_all(model, engine, prompts, sampling):
    return [hf_greedy(model, p, max_new_tokens=sampling.max_new_tokens, eos_id=engine.eos_id, suppress_ids=engine.suppress_ids)
            for p in prompts]


def test_group_samples(engine, prompts, rollout_cfg):
    sampling = rollout_cfg.sampling
    groups = engine.generate(prompts, sampling)
    assert len(engine.suppress_ids) == 4  # image/video pads, vision start/end: never in a response
    assert engine.version == 0  # the samples carry it (check_groups)
    check_groups(engine, groups, len(prompts), sampling.group_size, sampling.max_new_tokens)
    assert all(len({tuple(s.token_ids) for s in g}) > 1 for g in groups), "G samples of a random model should differ"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_transformers(engine, reference, prompts, rollout_cfg, temperature):
    sampling = rollout_cfg.sampling.model_copy(update={"temperature": temperature, "max_new_tokens": 24})
    groups = engine.generate(prompts, sampling)
    worst = 0.0
    for prompt, group in zip(prompts, groups):
        for s in group:
            ids = torch.from_numpy(np.concatenate([prompt.input_ids, np.asarray(s.token_ids, dtype=np.int64)]))[None]
            with torch.no_grad():
                logits = reference(ids).logits
            start = len(prompt.input_ids)
            expected = masked_logprobs(logits[:, start - 1:-1], ids[:, start:], temperature=temperature,
                                       suppress_ids=engine.suppress_ids)[0].numpy()
            np.testing.assert_allclose(np.asarray(s.logprobs), expected, atol=LOGPROB_ATOL, rtol=0)
            worst = max(worst, float(np.abs(np.asarray(s.logprobs) - expected).max()))
            if temperature != 1.0:
                # The temperature really enters vLLM's numbers.
                plain = masked_logprobs(logits[:, start - 1:-1], ids[:, start:], temperature=1.0,
                                        suppress_ids=engine.suppress_ids)[0].numpy()
                assert np.abs(np.asarray(s.logprobs) - plain).max() > 10 * LOGPROB_ATOL
    print(f"largest |vLLM - transformers| log-prob gap at T={temperature}: {worst:.2e}")


def test_greedy_matches_transformers(engine, reference, prompts, rollout_cfg):
    sampling = rollout_cfg.sampling
    groups = engine.generate(prompts, sampling, greedy=True)
    assert all(len(g) == 1 for g in groups)
    assert [g[0].token_ids for g in groups] == _hf_greedy_all(reference, engine, prompts, sampling)


def test_transformers_engine_beside_vllm(engine, model_cfg, prompts, rollout_cfg):
    """The project's TransformersEngine serves the same text-only model (`bench.rollout` puts the two
    side by side): the same sample contract, and the same greedy tokens as vLLM."""
    from raytrain.engines.transformers_engine import TransformersEngine

    hf = TransformersEngine(model_cfg)
    sampling = rollout_cfg.sampling
    check_groups(hf, hf.generate(prompts, sampling), len(prompts), sampling.group_size, sampling.max_new_tokens)
    assert hf.suppress_ids == engine.suppress_ids
    assert _greedy(hf, prompts, sampling) == _greedy(engine, prompts, sampling)


def _corruptions(state: dict[str, torch.Tensor]):
    name = sorted(state)[0]
    missing = {k: v for k, v in state.items() if k != name}
    extra = {**state, "model.not_a_layer.weight": torch.zeros(2, 2)}
    shaped = {**state, name: torch.zeros(*state[name].shape, 2)}
    return {"missing": (name, missing), "unexpected": ("model.not_a_layer.weight", extra), "wrong shape": (name, shaped)}


@pytest.mark.parametrize("kind", ["missing", "unexpected", "wrong shape"])
def test_mismatched_sync_refused(engine, reference, prompts, rollout_cfg, kind):
    before = _greedy(engine, prompts, rollout_cfg.sampling)
    key, bad = _corruptions(sync_state(build_tiny_text_model(engine.tokenizer, seed=1)))[kind]
    with pytest.raises(ValueError) as exc:
        push_weights(LocalEngines([engine]), bad, version=1, bucket_bytes=BUCKET_BYTES)
    assert kind in str(exc.value) and key in str(exc.value), str(exc.value)
    assert engine.version == 0
    # Refused before any tensor was loaded: the engine still serves the original weights.
    assert _greedy(engine, prompts, rollout_cfg.sampling) == before


def test_full_weight_sync(engine, reference, prompts, rollout_cfg):
    sampling = rollout_cfg.sampling
    before = _greedy(engine, prompts, sampling)
    trained = build_tiny_text_model(engine.tokenizer, seed=1).eval()
    state = sync_state(trained)
    assert len(list(buckets(state, BUCKET_BYTES))) > 2

    push_weights(LocalEngines([engine]), state, version=1, bucket_bytes=BUCKET_BYTES)
    assert engine.version == 1
    after = _greedy(engine, prompts, sampling)
    assert after == _hf_greedy_all(trained, engine, prompts, sampling)
    assert after != before, "a differently seeded model should answer differently"
    assert {s.version for g in engine.generate(prompts[:1], sampling) for s in g} == {1}

    # Back to the first weights as version 2: the reload is complete, nothing of version 1 lingers
    # (layer post-processing and the prefix cache included).
    push_weights(LocalEngines([engine]), sync_state(reference), version=2, bucket_bytes=BUCKET_BYTES)
    assert engine.version == 2
    assert _greedy(engine, prompts, sampling) == before


def test_incomplete_sync_does_not_advance(engine, reference, prompts, rollout_cfg):
    """Buckets announced but never sent: the sync fails loudly and the version stays."""
    state = sync_state(reference)
    served = engine.version
    engine.begin_update(served + 1, {k: tuple(v.shape) for k, v in state.items()})
    first = next(iter(buckets(state, BUCKET_BYTES)))
    engine.load_bucket(first)
    with pytest.raises(ValueError, match="incomplete"):
        engine.finish_update()
    assert engine.version == served
    with pytest.raises(RuntimeError, match="serves no single weight version"):
        engine.generate(prompts, rollout_cfg.sampling, greedy=True)
    # A complete sync heals it.
    push_weights(LocalEngines([engine]), state, version=served + 2, bucket_bytes=BUCKET_BYTES)
    assert engine.version == served + 2
    assert _greedy(engine, prompts, rollout_cfg.sampling) == _hf_greedy_all(reference, engine, prompts, rollout_cfg.sampling)


@pytest.fixture
def engine_core_serialisation(engine, monkeypatch):
    """The tests run vLLM's engine core in this process; on GPUs it runs in another, and worker RPC
    arguments cross msgpack (no dataclasses, tuples become lists). Send them through it here too."""
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    rpc, encoder, decoder = engine.llm.collective_rpc, MsgpackEncoder(), MsgpackDecoder()

    def serialised(method, timeout=None, args=(), kwargs=None):
        return rpc(method, timeout=timeout, args=tuple(decoder.decode(encoder.encode(list(args)))), kwargs=kwargs)

    monkeypatch.setattr(engine.llm, "collective_rpc", serialised)


def test_full_weight_sync_by_broadcast(engine, reference, prompts, rollout_cfg, engine_core_serialisation):
    """The GPU path's code over gloo: this thread is rank 0 of a weight group, vLLM's worker receives
    each bucket straight from the broadcast and loads it."""
    sampling = rollout_cfg.sampling
    engines = LocalEngines([engine])
    group = open_weight_group(engines, "gloo", timeout_s=60.0)
    trained = build_tiny_text_model(engine.tokenizer, seed=2).eval()
    served = engine.version
    push_weights(engines, sync_state(trained), served + 1, BUCKET_BYTES, group)
    assert engine.version == served + 1
    assert _greedy(engine, prompts, sampling) == _hf_greedy_all(trained, engine, prompts, sampling)

    state = sync_state(reference)
    check_unannounced_bucket_refused_without_stalling(engine, group, state, BUCKET_BYTES)
    assert _greedy(engine, prompts, sampling) == _hf_greedy_all(trained, engine, prompts, sampling)

    # A restarted sender opens a new group; the engine joins it in place of the old one, and a sync
    # announced for the old group is refused before anything is broadcast.
    old, group = group.address, open_weight_group(engines, "gloo", timeout_s=60.0)
    with pytest.raises(RuntimeError, match="not in the sender's weight group"):
        engine.begin_update(served + 3, {k: tuple(v.shape) for k, v in state.items()}, old)
    push_weights(engines, state, served + 3, BUCKET_BYTES, group)
    assert engine.version == served + 3
    assert _greedy(engine, prompts, sampling) == _hf_greedy_all(reference, engine, prompts, sampling)
