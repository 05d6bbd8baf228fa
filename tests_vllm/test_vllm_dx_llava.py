"""The vLLM engine serving the tiny DX-LLaVA from prompt embeddings: vLLM holds the LLaMA alone, the engine
runs tower and projector and feeds vLLM the input embeddings; answers, log-probabilities and the head's
probabilities are the transformers side's, before and after weight syncs (object store and broadcast).

One engine for the module; the tests run in file order and the later ones change its weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytrain.config.sections import MediaConfig, ModelConfig, RolloutConfig
from raytrain.data.batch import Prompt
from raytrain.engines.transformers_engine import TransformersEngine
from raytrain.models.loading import load_policy, sync_state
from raytrain.models.logprobs import token_logprobs
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests.helpers.engine_checks import greedy_tokens

LOGPROB_ATOL = 1e-4  # float32 both sides; vLLM's CPU kernels sum in another order (measured ~1e-6)
BUCKET_BYTES = 256 << 10  # the tiny model's LLaMA, projector and head go in several buckets


@pytest.fixture(scope="module")
def dx_cfg(tmp_path_factory):
    from jobs.make_tiny_model import main

    out = tmp_path_factory.mktemp("tiny-dx-llava")
    main(["--family", "dx-llava", "--out", str(out)])
    return ModelConfig(path=str(out), dtype="float32")


@pytest.fixture(scope="module")
def rollout_cfg():
    return RolloutConfig(engine="vllm", sampling={"group_size": 3, "temperature": 1.0, "max_new_tokens": 12},
                         vllm={"max_model_len": 256, "enforce_eager": True, "cpu_kvcache_gb": 1})


@pytest.fixture(scope="module")
def engine(dx_cfg, rollout_cfg):
    from raytrain.engines.vllm_engine import VLLMEngine

    return VLLMEngine(dx_cfg, rollout_cfg)


@pytest.fixture(scope="module")
def hf_engine(dx_cfg):
    return TransformersEngine(dx_cfg)


@pytest.fixture(scope="module")
def prompts(hf_engine):
    """Three images (two sizes) as the pipeline encodes them: 4 `<image>` slots each in the tiny model."""
    family, rng = hf_engine.family, np.random.default_rng(0)
    out = []
    for i, (h, w) in enumerate([(64, 64), (96, 80), (64, 64)]):
        frames = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        encoded = family.encode_prompt(family.chat_text("Is this image real or fake?", "image"), frames, False, MediaConfig(), None)
        out.append(Prompt(key=str(i), id=str(i), path=f"/data/{i}.png", label="fake", category="synthetic", is_video=False,
                          **encoded))
    return out


def _perturbed(model, gen: torch.Generator, prefixes: tuple[str, ...], scale: float):
    """`model` with noise added to its parameters under `prefixes` (the projector's scaled up so the image
    tokens weigh on the answers)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(prefixes):
                param.add_(torch.randn(param.shape, generator=gen) * scale * param.abs().mean())
    return model


def test_prompt_embeds_rollouts_match_transformers(engine, hf_engine, prompts, rollout_cfg):
    config = engine.llm.llm_engine.model_config
    assert config.hf_config.architectures == ["LlamaForCausalLM"] and config.hf_config.model_type == "llama"
    assert all(set(x) == {"prompt_embeds"} for x in engine.serving.inputs(prompts))
    sampling = rollout_cfg.sampling
    assert greedy_tokens(engine, prompts, sampling) == greedy_tokens(hf_engine, prompts, sampling)
    assert engine.head_probs(prompts) == pytest.approx(hf_engine.head_probs(prompts), abs=1e-6)


def _logprob_gap(engine, model, prompts, groups, temperature: float) -> float:
    """The largest gap between the engine's log-probabilities of its samples and the trainer's (`model`'s),
    all rows in one forward as a training step computes them."""
    rows = [(p, s) for p, g in zip(prompts, groups) for s in g]
    batch = engine.family.collate([p for p, _ in rows], [s.token_ids for _, s in rows])
    mask = batch.pop("response_mask").bool()
    with torch.no_grad():
        logp = token_logprobs(engine.family, model, batch, temperature=temperature)
    return max(float(np.abs(np.asarray(s.logprobs) - logp[i][mask[i]].numpy()).max()) for i, (_, s) in enumerate(rows))


def test_sampled_logprobs_are_the_trainers(engine, dx_cfg, prompts, rollout_cfg):
    """Sampled at T=0.7: vLLM's log-probabilities are those the trainer computes for the same tokens."""
    sampling = rollout_cfg.sampling.model_copy(update={"temperature": 0.7})
    groups = engine.generate(prompts, sampling)
    gap = _logprob_gap(engine, load_policy(dx_cfg).eval(), prompts, groups, 0.7)
    print(f"largest |vLLM - trainer| log-prob gap at T=0.7 from prompt embeddings: {gap:.2e}")
    assert gap <= LOGPROB_ATOL
    assert all(len({tuple(s.token_ids) for s in g}) > 1 for g in groups), "sampled responses of a random model should differ"


def test_synced_projector_and_llm_reach_both_sides(engine, hf_engine, dx_cfg, prompts, rollout_cfg):
    """Version 1: a perturbed projector alone (the engine's own copy of it updated); version 2: projector,
    head and LLaMA perturbed, broadcast over a gloo weight group straight into vLLM's worker, which hands
    the projector, head and embeddings back. Each time the engine's log-probabilities are the new weights'
    (not the old ones') and both engines answer alike."""
    sampling = rollout_cfg.sampling
    old = load_policy(dx_cfg).eval()
    gen = torch.Generator().manual_seed(0)
    new = _perturbed(load_policy(dx_cfg).eval(), gen, ("projector.",), 5.0)
    state = sync_state(new)
    assert not any(k.startswith("vision_tower.") for k in state), "the frozen tower never syncs"
    push_weights(LocalEngines([engine, hf_engine]), state, version=1, bucket_bytes=BUCKET_BYTES)
    groups = engine.generate(prompts, sampling)
    assert {s.version for g in groups for s in g} == {1}
    assert _logprob_gap(engine, new, prompts, groups, 1.0) <= LOGPROB_ATOL < _logprob_gap(engine, old, prompts, groups, 1.0) / 10
    after = greedy_tokens(engine, prompts, sampling)
    assert after == greedy_tokens(hf_engine, prompts, sampling)

    old, new = new, _perturbed(load_policy(dx_cfg).eval(), gen, ("projector.", "head.", "language_model."), 1.0)
    engines = LocalEngines([engine])
    group = open_weight_group(engines, "gloo", timeout_s=60.0)
    push_weights(engines, sync_state(new), version=2, bucket_bytes=BUCKET_BYTES, group=group)
    push_weights(LocalEngines([hf_engine]), sync_state(new), version=2, bucket_bytes=BUCKET_BYTES)
    assert engine.version == hf_engine.version == 2
    groups = engine.generate(prompts, sampling)
    assert _logprob_gap(engine, new, prompts, groups, 1.0) <= LOGPROB_ATOL < _logprob_gap(engine, old, prompts, groups, 1.0) / 10
    assert greedy_tokens(engine, prompts, sampling) == greedy_tokens(hf_engine, prompts, sampling)
    assert engine.head_probs(prompts) == pytest.approx(hf_engine.head_probs(prompts), abs=1e-6)


def test_what_the_engine_refuses(engine, dx_cfg, rollout_cfg):
    from raytrain.engines.vllm_engine import VLLMEngine, prompt_embeds_problem

    assert prompt_embeds_problem({"enable_prompt_embeds", "model"}) is None
    problem = prompt_embeds_problem({"model"})
    assert "prompt embeddings (enable_prompt_embeds)" in problem and "rollout.engine: transformers" in problem, problem
    lora = dx_cfg.model_copy(update={"lora": dx_cfg.lora.model_copy(update={"enabled": True})})
    with pytest.raises(ValueError, match=r"^model.lora.enabled: the vLLM engine serves DxLlava with full weights only"):
        VLLMEngine(lora, rollout_cfg)
