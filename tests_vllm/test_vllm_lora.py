"""The vLLM engine under LoRA on the tiny Qwen2.5-VL: only the adapter travels, as a new adapter version
per sync, and the images' and videos' answers follow it."""

from __future__ import annotations

import pytest
import torch

from raytrain.config.sections import ModelConfig, RolloutConfig
from raytrain.engines.transformers_engine import TransformersEngine
from raytrain.models.loading import load_policy, sync_state
from raytrain.models.tiny import build_tiny_model
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests.helpers.engine_checks import greedy_tokens


@pytest.fixture(scope="module")
def lora_cfg(vl_model_dir):
    return ModelConfig(path=str(vl_model_dir), dtype="float32", lora={"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0})


@pytest.fixture(scope="module")
def rollout_cfg():
    return RolloutConfig(
        engine="vllm",
        sampling={"group_size": 2, "max_new_tokens": 16},
        vllm={"max_model_len": 256, "enforce_eager": True, "cpu_kvcache_gb": 1},
    )


@pytest.fixture(scope="module")
def engine(lora_cfg, rollout_cfg):
    """LoRA serving is fixed when vLLM starts, so this module has its own engine."""
    from raytrain.engines.vllm_engine import VLLMEngine

    return VLLMEngine(lora_cfg, rollout_cfg)


def _trainer(lora_cfg, seed: int):
    """A trainer-side LoRA policy whose adapter moved away from the zero-initialised lora_B."""
    model = load_policy(lora_cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model.eval()


def test_adapter_sync_changes_output_to_the_adapted_model(engine, lora_cfg, prompts, rollout_cfg):
    sampling = rollout_cfg.sampling
    hf = TransformersEngine(lora_cfg)  # the same base with a zero adapter: the base model's answers
    before = greedy_tokens(engine, prompts, sampling)
    assert before == greedy_tokens(hf, prompts, sampling)

    for version, seed in ((1, 7), (2, 8)):
        state = sync_state(_trainer(lora_cfg, seed))
        assert state and all("lora_" in k for k in state)
        assert sum(v.numel() for v in state.values()) < sum(p.numel() for p in hf.model.parameters()) / 4
        push_weights(LocalEngines([engine, hf]), state, version=version)
        assert engine.version == hf.version == version
        after = greedy_tokens(engine, prompts, sampling)
        assert after == greedy_tokens(hf, prompts, sampling), f"adapter version {version}"
        assert after != before, "a perturbed adapter should change the greedy answers"
        assert {s.version for g in engine.generate(prompts[:2], sampling) for s in g} == {version}
        before = after
    # One adapter is served at a time; older versions are dropped from vLLM.
    assert engine.llm.llm_engine.list_loras() == {engine._lora.lora_int_id}


def test_full_state_or_bad_adapter_refused(engine, lora_cfg, family, prompts, rollout_cfg):
    served = engine.version
    before = greedy_tokens(engine, prompts, rollout_cfg.sampling)
    with pytest.raises(ValueError, match="missing"):
        push_weights(LocalEngines([engine]), sync_state(build_tiny_model(family.processor, seed=1)), version=served + 1)
    bad = sync_state(_trainer(lora_cfg, 9))
    key = sorted(bad)[0]
    bad[key] = torch.zeros(bad[key].shape[0] + 1, bad[key].shape[1])
    with pytest.raises(ValueError, match="wrong shape") as exc:
        push_weights(LocalEngines([engine]), bad, version=served + 1)
    assert key in str(exc.value)
    assert engine.version == served
    assert greedy_tokens(engine, prompts, rollout_cfg.sampling) == before


def test_lora_engine_refuses_a_weight_group(engine):
    """Adapters travel through the object store; a LoRA engine says so instead of joining a group."""
    with pytest.raises(ValueError, match="object store"):
        open_weight_group(LocalEngines([engine]), "gloo", timeout_s=5.0)
