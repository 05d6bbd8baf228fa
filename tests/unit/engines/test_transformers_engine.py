"""The transformers rollout engine (raytrain.engines.base), its colocated form on a live module, and weight sync
(raytrain.models.loading), without Ray."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import PeftModel

from raytrain.config import parse_config
from raytrain.engines.base import make_engine
from raytrain.engines.transformers_engine import LiveModuleEngine, TransformersEngine
from raytrain.models.loading import load_family, load_policy, sync_state
from raytrain.models.logprobs import token_logprobs
from raytrain.models.tiny import build_tiny_model
from raytrain.weight_sync.protocol import buckets, tensor_spec
from raytrain.weight_sync.sender import LocalEngines, push_weights
from tests.helpers.engine_checks import check_groups


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as rollout actors run on CPU (`rollout.torch_threads`): on a small
    machine two OpenMP threads make these tiny matmuls ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cfg(make_config_dict, tmp_path_factory):
    return parse_config(make_config_dict(tmp_path_factory.mktemp("engine-run")))


@pytest.fixture(scope="module")
def lora_cfg(make_config_dict, tmp_path_factory):
    raw = make_config_dict(tmp_path_factory.mktemp("engine-lora-run"))
    raw["model"]["lora"] = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}
    return parse_config(raw)


@pytest.fixture(scope="module")
def engine(cfg):
    """Shared by the tests that only read it; tests that sync weights build their own."""
    torch.manual_seed(0)
    return TransformersEngine(cfg.model)


@pytest.fixture(scope="module")
def prompts(media_prompts):
    return media_prompts


def _greedy(engine, prompts, sampling):
    return [group[0].token_ids for group in engine.generate(prompts, sampling, greedy=True)]


def test_group_samples(engine, prompts, cfg):
    sampling = cfg.rollout.sampling
    torch.manual_seed(1)
    groups = engine.generate(prompts, sampling)
    assert {engine.family.image_token_id, engine.family.video_token_id} <= set(engine.suppress_ids)
    assert engine.version == 0  # the samples carry it (check_groups)
    check_groups(engine, groups, len(prompts), sampling.group_size, sampling.max_new_tokens)


def test_vision_tokens_never_sampled_even_when_preferred(cfg, prompts):
    """A model that strongly prefers the vision special tokens still never emits them."""
    eng = TransformersEngine(cfg.model)
    suppress = torch.tensor(eng.suppress_ids)

    def boost(module, args, output):
        output = output.clone()
        output[..., suppress] += 100.0
        return output

    eng.model.get_output_embeddings().register_forward_hook(boost)
    torch.manual_seed(2)
    groups = eng.generate(prompts[:1], cfg.rollout.sampling)
    greedy = eng.generate(prompts[:1], cfg.rollout.sampling, greedy=True)
    for s in [s for g in groups + greedy for s in g]:
        assert not set(eng.suppress_ids) & set(s.token_ids)
        assert all(np.isfinite(s.logprobs))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_trainer(engine, prompts, cfg, temperature):
    sampling = cfg.rollout.sampling.model_copy(update={"temperature": temperature})
    torch.manual_seed(3)
    groups = engine.generate(prompts, sampling)
    for prompt, group in zip(prompts, groups):
        batch = engine.family.collate([prompt] * len(group), [s.token_ids for s in group])
        with torch.no_grad():
            logp = token_logprobs(engine.family, engine.model, batch, temperature=temperature)
        start = len(prompt.input_ids)
        for i, s in enumerate(group):
            n = len(s.token_ids)
            assert batch["response_mask"][i].sum().item() == n
            expected = logp[i, start:start + n].numpy()
            np.testing.assert_allclose(np.asarray(s.logprobs), expected, atol=1e-4, rtol=0)
        if temperature != 1.0:
            # The temperature really enters the numbers: untempered log-probs differ.
            with torch.no_grad():
                plain = token_logprobs(engine.family, engine.model, batch, temperature=1.0)
            s = group[0]
            assert not np.allclose(s.logprobs, plain[0, start:start + len(s.token_ids)].numpy(), atol=1e-3)


def test_logprobs_match_with_early_stops(cfg, prompts):
    """Responses of different lengths (some end with EOS, some are truncated): padding and
    the response mask still line the trainer's numbers up with the engine's."""
    eng = TransformersEngine(cfg.model)

    def favour_eos(module, args, output):
        output = output.clone()
        output[..., eng.eos_id] += 2.5
        return output

    eng.model.get_output_embeddings().register_forward_hook(favour_eos)
    sampling = cfg.rollout.sampling.model_copy(update={"group_size": 8, "temperature": 0.7})
    torch.manual_seed(8)
    groups = eng.generate(prompts, sampling)
    samples = [s for g in groups for s in g]
    assert any(s.truncated for s in samples) and any(not s.truncated for s in samples)
    for s in samples:
        if s.truncated:
            assert len(s.token_ids) == sampling.max_new_tokens and eng.eos_id not in s.token_ids
        else:
            assert s.token_ids.index(eng.eos_id) == len(s.token_ids) - 1
    for prompt, group in zip(prompts, groups):
        batch = eng.family.collate([prompt] * len(group), [s.token_ids for s in group])
        with torch.no_grad():
            logp = token_logprobs(eng.family, eng.model, batch, temperature=0.7)
        start = len(prompt.input_ids)
        for i, s in enumerate(group):
            expected = logp[i, start:start + len(s.token_ids)].numpy()
            np.testing.assert_allclose(np.asarray(s.logprobs), expected, atol=1e-4, rtol=0)


def test_greedy_is_deterministic(engine, prompts, cfg):
    sampling = cfg.rollout.sampling
    torch.manual_seed(4)
    first = engine.generate(prompts, sampling, greedy=True)
    torch.manual_seed(5)
    second = engine.generate(prompts, sampling, greedy=True)
    assert all(len(g) == 1 for g in first)
    assert [g[0].token_ids for g in first] == [g[0].token_ids for g in second]
    for a, b in zip(first, second):
        np.testing.assert_allclose(a[0].logprobs, b[0].logprobs, atol=1e-6)


def test_seeded_sampling_depends_on_the_prompt_and_version_not_on_call_order(engine, prompts, cfg):
    # `rollout.sampling.seed`: a prompt's G samples come from its own seed, whatever was sampled before it.
    sampling = cfg.rollout.sampling.model_copy(update={"seed": 3})
    tokens = lambda groups: [[s.token_ids for s in g] for g in groups]  # noqa: E731
    torch.manual_seed(0)
    forward = tokens(engine.generate(prompts, sampling))
    torch.manual_seed(1)
    backward = tokens(engine.generate(prompts[::-1], sampling))[::-1]
    assert forward == backward
    assert any(len({tuple(t) for t in group}) > 1 for group in forward)  # still G different samples
    # The global RNG is left as it was: other sampling in the process does not depend on the rollouts.
    torch.manual_seed(2)
    engine.generate(prompts[:1], sampling)
    after = torch.rand(1)
    torch.manual_seed(2)
    assert torch.equal(after, torch.rand(1))
    # Another seed or another policy version samples anew.
    assert tokens(engine.generate(prompts, sampling.model_copy(update={"seed": 4}))) != forward
    engine.version += 1
    try:
        assert tokens(engine.generate(prompts, sampling)) != forward
    finally:
        engine.version -= 1


def test_full_weight_sync(cfg, engine, prompts, tmp_path):
    eng = TransformersEngine(cfg.model)
    other = build_tiny_model(eng.family.processor, seed=1).eval()
    before = _greedy(eng, prompts, cfg.rollout.sampling)

    push_weights(LocalEngines([eng]), sync_state(other), version=1)
    assert eng.version == 1
    for k, v in other.state_dict().items():
        assert torch.equal(eng.model.state_dict()[k], v), k

    other.save_pretrained(tmp_path / "other")
    eng.family.processor.save_pretrained(tmp_path / "other")
    reference = TransformersEngine(cfg.model.model_copy(update={"path": str(tmp_path / "other")}))
    after = _greedy(eng, prompts, cfg.rollout.sampling)
    assert after == _greedy(reference, prompts, cfg.rollout.sampling)
    assert after != before, "a differently seeded model should answer differently"

    # Samples carry the version that produced them.
    torch.manual_seed(6)
    assert {s.version for g in eng.generate(prompts[:1], cfg.rollout.sampling) for s in g} == {1}


def test_unstaged_sync_loads_in_place_and_a_cut_short_one_stops_generation(cfg, prompts):
    # `rollout.mode: sync`: buckets go straight into the served tensors (no copy kept aside).
    eng = make_engine(cfg.model, cfg.rollout)
    assert not eng.staged and make_engine(cfg.model, cfg.rollout.model_copy(update={"mode": "async"})).staged
    served = {k: v.data_ptr() for k, v in eng.model.state_dict().items()}
    state = sync_state(build_tiny_model(eng.family.processor, seed=1))
    push_weights(LocalEngines([eng]), state, version=1, bucket_bytes=64 << 10)
    assert eng.served_version() == 1
    for k, v in eng.model.state_dict().items():
        assert torch.equal(v, state[k]) and v.data_ptr() == served[k], k

    # Cut short after a bucket: weights of no single version, so no generation until a complete sync.
    other = sync_state(build_tiny_model(eng.family.processor, seed=2))
    eng.begin_update(2, tensor_spec(other))
    eng.load_bucket(next(buckets(other, 64 << 10)))
    assert eng.served_version() is None
    with pytest.raises(RuntimeError, match="serves no single weight version"):
        eng.generate(prompts[:1], cfg.rollout.sampling)
    push_weights(LocalEngines([eng]), other, version=2, bucket_bytes=64 << 10)
    assert eng.served_version() == 2
    assert {s.version for g in eng.generate(prompts[:1], cfg.rollout.sampling) for s in g} == {2}


def _corruptions(state: dict[str, torch.Tensor]):
    name = sorted(state)[0]
    missing = {k: v for k, v in state.items() if k != name}
    extra = {**state, "model.not_a_layer.weight": torch.zeros(2, 2)}
    shaped = dict(state)
    shaped[name] = torch.zeros(*state[name].shape, 2)
    return [
        ("missing", name, missing),
        ("unexpected", "model.not_a_layer.weight", extra),
        ("wrong shape", name, shaped),
    ]


@pytest.mark.parametrize("kind", ["missing", "unexpected", "wrong shape"])
def test_bad_full_state_refused(cfg, kind):
    eng = TransformersEngine(cfg.model)
    original = {k: v.clone() for k, v in eng.model.state_dict().items()}
    state = sync_state(build_tiny_model(eng.family.processor, seed=1))
    (_, key, bad), = [c for c in _corruptions(state) if c[0] == kind]
    with pytest.raises(ValueError) as exc:
        push_weights(LocalEngines([eng]), bad, version=1)
    msg = str(exc.value)
    assert kind in msg and key in msg, msg
    assert eng.version == 0
    # Nothing was loaded partially.
    for k, v in eng.model.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_lora_adapter_sync(lora_cfg, prompts):
    eng = TransformersEngine(lora_cfg.model)
    assert isinstance(eng.model, PeftModel)
    sampling = lora_cfg.rollout.sampling
    before = _greedy(eng, prompts, sampling)

    # The "trainer": another LoRA policy whose adapter moved away from the zero-initialised lora_B.
    trainer = TransformersEngine(lora_cfg.model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    state = sync_state(trainer.model)
    assert state and all("lora_" in k for k in state), [k for k in state if "lora_" not in k]
    base_keys = set(eng.model.get_base_model().state_dict())
    assert len(state) < len(base_keys)

    frozen = {k: v.clone() for k, v in eng.model.state_dict().items() if "lora_" not in k}
    push_weights(LocalEngines([eng]), state, version=3)
    assert eng.version == 3
    after = _greedy(eng, prompts, sampling)
    assert after == _greedy(trainer, prompts, sampling)
    assert after != before, "a perturbed adapter should change the greedy answer"
    # Only the adapter moved.
    for k, v in eng.model.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k]), k

    # A full state is not an adapter state.
    full = sync_state(build_tiny_model(eng.family.processor, seed=1))
    with pytest.raises(ValueError, match="missing"):
        push_weights(LocalEngines([eng]), full, version=4)
    assert eng.version == 3
    bad = copy.copy(state)
    key = sorted(bad)[0]
    bad[key] = torch.zeros(bad[key].shape[0] + 1, bad[key].shape[1])
    with pytest.raises(ValueError, match="wrong shape"):
        push_weights(LocalEngines([eng]), bad, version=4)
    assert eng.version == 3


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_colocated_rollouts_use_the_live_weights(cfg, lora_cfg, prompts, tuning):
    """`rollout.colocate`: the trainer's own module, in training mode and moved away from its initial weights
    (as by an update), generates; the log-probs recorded at rollout are the trainer's forward on the same
    tokens with those weights (LoRA: the base with the live adapter), not the initial weights'."""
    model_cfg = (cfg if tuning == "full" else lora_cfg).model
    family = load_family(model_cfg)
    module = load_policy(model_cfg).train()
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.requires_grad and (tuning == "full" or "lora_B" in name):
                param.add_(torch.randn(param.shape, generator=gen) * (0.05 if tuning == "full" else 0.5))
    live = LiveModuleEngine(family, module)
    live.version = 4
    sampling = cfg.rollout.sampling
    torch.manual_seed(10)
    groups = live.generate(prompts[1:], sampling)
    assert module.training  # back to training after generating
    served = SimpleNamespace(suppress_ids=family.suppress_ids, eos_id=family.end_id, version=4)  # what check_groups reads
    check_groups(served, groups, 2, sampling.group_size, sampling.max_new_tokens)

    initial = load_policy(model_cfg).eval()
    moved = []
    for prompt, group in zip(prompts[1:], groups):
        batch = family.collate([prompt] * len(group), [s.token_ids for s in group])
        with torch.no_grad():
            trainer = token_logprobs(family, module, batch, temperature=sampling.temperature)
            before = token_logprobs(family, initial, batch, temperature=sampling.temperature)
        start = len(prompt.input_ids)
        for i, s in enumerate(group):
            recorded, n = np.asarray(s.logprobs), len(s.token_ids)
            np.testing.assert_allclose(recorded, trainer[i, start:start + n].numpy(), atol=1e-4, rtol=0)
            moved.append(np.abs(recorded - before[i, start:start + n].numpy()).max())
    assert max(moved) > 1e-2, "the initial weights would have given the same log-probs: the test would prove nothing"
