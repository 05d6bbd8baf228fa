"""The vLLM engine under LoRA: only the adapter travels, as a new adapter version per sync."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from raytrain.config.sections import ModelConfig, RolloutConfig
from raytrain.models.loading import sync_state, wrap_lora
from raytrain.models.tiny import build_tiny_text_model
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests_vllm.conftest import hf_greedy


@pytest.fixture(scope="module")
def lora_cfg(text_model_dir):
    return ModelConfig(path=str(text_model_dir), dtype="float32", lora={"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0})


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


def _trainer(lora_cfg, text_model_dir, seed: int):
    """A trainer-side LoRA policy whose adapter moved away from the zero-initialised lora_B."""
    model = wrap_lora(AutoModelForCausalLM.from_pretrained(text_model_dir, dtype=torch.float32), lora_cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model.eval()


def _greedy(engine, prompts, sampling):
    return [g[0].token_ids for g in engine.generate(prompts, sampling, greedy=True)]


def _hf(model, engine, prompts, sampling):
    return [hf_greedy(model, p, max_new_tokens=sampling.max_new_tokens, eos_id=engine.eos_id, suppress_ids=engine.suppress_ids)
            for p in prompts]


def test_adapter_sync_changes_output_to_the_adapted_model(engine, lora_cfg, text_model_dir, prompts, rollout_cfg):
    sampling = rollout_cfg.sampling
    base = AutoModelForCausalLM.from_pretrained(text_model_dir, dtype=torch.float32).eval()
    before = _greedy(engine, prompts, sampling)
    assert before == _hf(base, engine, prompts, sampling)  # no adapter yet: the base model

    for version, seed in ((1, 7), (2, 8)):
        trainer = _trainer(lora_cfg, text_model_dir, seed)
        state = sync_state(trainer)
        assert state and all("lora_" in k for k in state)
        assert sum(v.numel() for v in state.values()) < sum(p.numel() for p in base.parameters()) / 4
        push_weights(LocalEngines([engine]), state, version=version)
        assert engine.version == version
        after = _greedy(engine, prompts, sampling)
        assert after == _hf(trainer, engine, prompts, sampling), f"adapter version {version}"
        assert after != before, "a perturbed adapter should change the greedy answer"
        assert {s.version for g in engine.generate(prompts[:1], sampling) for s in g} == {version}
        before = after
    # One adapter is served at a time; older versions are dropped from vLLM.
    assert engine.llm.llm_engine.list_loras() == {engine._lora.lora_int_id}


def test_full_state_or_bad_adapter_refused(engine, lora_cfg, text_model_dir, prompts, rollout_cfg):
    served = engine.version
    before = _greedy(engine, prompts, rollout_cfg.sampling)
    with pytest.raises(ValueError, match="missing"):
        push_weights(LocalEngines([engine]), sync_state(build_tiny_text_model(engine.tokenizer, seed=1)), version=served + 1)
    bad = sync_state(_trainer(lora_cfg, text_model_dir, 9))
    key = sorted(bad)[0]
    bad[key] = torch.zeros(bad[key].shape[0] + 1, bad[key].shape[1])
    with pytest.raises(ValueError, match="wrong shape") as exc:
        push_weights(LocalEngines([engine]), bad, version=served + 1)
    assert key in str(exc.value)
    assert engine.version == served
    assert _greedy(engine, prompts, rollout_cfg.sampling) == before


def test_lora_engine_refuses_a_weight_group(engine):
    """Adapters travel through the object store; a LoRA engine says so instead of joining a group."""
    with pytest.raises(ValueError, match="object store"):
        open_weight_group(LocalEngines([engine]), "gloo", timeout_s=5.0)
