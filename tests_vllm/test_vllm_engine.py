"""The vLLM engine (raytrain.engines.vllm_engine) on CPU, full-weight mode, on the tiny Qwen2.5-VL with
images, videos and text, against the trainer's forward and the transformers engine.

One engine for the whole module (vLLM starts in ~5-20 s); tests run in file order and the
later ones change its weights, each saying what it expects the engine to serve.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from raytrain.config.sections import MediaConfig, RolloutConfig
from raytrain.data.batch import Prompt, Refusal
from raytrain.engines.transformers_engine import TransformersEngine
from raytrain.models.loading import load_policy, sync_state
from raytrain.models.logprobs import token_logprobs
from raytrain.models.tiny import build_tiny_model
from raytrain.weight_sync.protocol import buckets
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests.helpers.engine_checks import check_groups, check_unannounced_bucket_refused_without_stalling, greedy_tokens

# float32 on both sides; vLLM's CPU kernels (oneDNN GEMMs, its own attention) sum in another
# order than torch: measured gaps here are ~1e-6.
LOGPROB_ATOL = 1e-4
BUCKET_BYTES = 256 << 10  # the tiny model's ~2 MB go in several buckets


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
def trainer_model(model_cfg):
    """The weights the engine starts with, as the trainer loads them."""
    return load_policy(model_cfg).eval()


@pytest.fixture(scope="module")
def hf_engine(model_cfg):
    """The transformers engine on the same checkpoint; the sync tests send it the same weights."""
    return TransformersEngine(model_cfg)


def _trainer_logprobs(family, model, prompts, groups, temperature: float) -> list[np.ndarray]:
    """The trainer's log-probabilities of every sampled token: all rows in one forward (one vision
    tower call for the batch's images and videos), as a training step computes them."""
    rows = [(p, s) for p, g in zip(prompts, groups) for s in g]
    batch = family.collate([p for p, _ in rows], [s.token_ids for _, s in rows])
    mask = batch.pop("response_mask").bool()
    with torch.no_grad():
        logp = token_logprobs(family, model, batch, temperature=temperature)
    return [logp[i][mask[i]].numpy() for i in range(len(rows))]


def _largest_gap(family, model, prompts, groups, temperature: float) -> float:
    expected = _trainer_logprobs(family, model, prompts, groups, temperature)
    got = [np.asarray(s.logprobs) for g in groups for s in g]
    return max(float(np.abs(a - b).max()) for a, b in zip(got, expected))


@pytest.mark.parametrize("kind", ["images", "videos", "mixed"])
def test_group_samples(engine, prompts, rollout_cfg, kind):
    chosen = {"images": [p for p in prompts if not p.is_video and p.pixel_values.size],
              "videos": [p for p in prompts if p.is_video], "mixed": prompts}[kind]
    sampling = rollout_cfg.sampling
    groups = engine.generate(chosen, sampling)
    assert len(engine.suppress_ids) == 4  # image/video pads, vision start/end: never in a response
    check_groups(engine, groups, len(chosen), sampling.group_size, sampling.max_new_tokens)
    assert all(len({tuple(s.token_ids) for s in g}) > 1 for g in groups), "G samples of a random model should differ"


def test_seeded_sampling_depends_on_the_prompt_and_version_not_on_call_order(engine, prompts, rollout_cfg):
    # `rollout.sampling.seed`: each prompt's request carries its own seed (`sample_seed`).
    sampling = rollout_cfg.sampling.model_copy(update={"seed": 3})
    tokens = lambda groups: [[s.token_ids for s in g] for g in groups]  # noqa: E731
    forward = tokens(engine.generate(prompts, sampling))
    assert tokens(engine.generate(prompts[::-1], sampling))[::-1] == forward
    assert tokens(engine.generate(prompts, sampling.model_copy(update={"seed": 4}))) != forward


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_the_trainer(engine, family, trainer_model, prompts, rollout_cfg, temperature):
    sampling = rollout_cfg.sampling.model_copy(update={"temperature": temperature, "max_new_tokens": 24})
    groups = engine.generate(prompts, sampling)
    gap = _largest_gap(family, trainer_model, prompts, groups, temperature)
    print(f"largest |vLLM - trainer| log-prob gap at T={temperature}: {gap:.2e}")
    assert gap <= LOGPROB_ATOL
    if temperature != 1.0:  # the temperature really enters vLLM's numbers
        assert _largest_gap(family, trainer_model, prompts, groups, 1.0) > 10 * LOGPROB_ATOL


def test_video_timing_follows_sample_fps(engine, family, trainer_model, sample_fps_prompt, rollout_cfg):
    """A clip sampled at 4 fps: vLLM's M-RoPE positions use the trainer's 0.5 s between temporal patches.
    Told another frame rate (1 s between temporal patches), the same frames score otherwise."""
    sampling = rollout_cfg.sampling
    groups = engine.generate([sample_fps_prompt], sampling)
    assert _largest_gap(family, trainer_model, [sample_fps_prompt], groups, 1.0) <= LOGPROB_ATOL

    vllm_input = family.vllm_input(sample_fps_prompt)
    frames, metadata = vllm_input["multi_modal_data"]["video"]
    assert len(frames) == 4 and metadata["frames_indices"] == [0, 1, 2, 3] and metadata["total_num_frames"] == 4
    assert metadata["fps"] == pytest.approx(2 / 0.5)  # temporal_patch_size / second_per_grid_t
    mistimed = {**vllm_input, "multi_modal_data": {"video": (frames, {**metadata, "fps": 2.0})}}
    (out,) = engine.llm.generate([mistimed], engine._sampling_params(sampling, sampling.group_size, False), use_tqdm=False)
    gap = _largest_gap(family, trainer_model, [sample_fps_prompt], [[engine._sample(c) for c in out.outputs]], 1.0)
    print(f"largest log-prob gap to the trainer when vLLM is told 2 fps: {gap:.2e}")
    assert gap > 2 * LOGPROB_ATOL  # measured: ~6e-4, against ~1e-6 at the right timing


def test_greedy_matches_the_transformers_engine(engine, hf_engine, prompts, sample_fps_prompt, rollout_cfg):
    sampling = rollout_cfg.sampling
    chosen = [*prompts, sample_fps_prompt]
    assert greedy_tokens(engine, chosen, sampling) == greedy_tokens(hf_engine, chosen, sampling)
    check_groups(hf_engine, hf_engine.generate(chosen, sampling), len(chosen), sampling.group_size, sampling.max_new_tokens)
    assert hf_engine.suppress_ids == engine.suppress_ids


def test_oversized_media_refused_and_the_call_goes_on(engine, family, prompts, rollout_cfg):
    """A 448x448 image is 256 vision tokens: beyond this engine's max_model_len (256). That prompt gets a
    refusal naming its file; the others in the call are served."""
    frames = np.random.default_rng(2).integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    encoded = family.encode_prompt(family.chat_text("Is this image real or fake?", "image"), frames, False,
                                   MediaConfig(max_pixels=448 * 448, min_pixels=28 * 28), None)
    huge = Prompt(key="huge", id="huge", path="/data/huge.png", label="fake", category="synthetic", is_video=False, **encoded)
    assert len(huge.input_ids) > rollout_cfg.vllm.max_model_len
    sampling = rollout_cfg.sampling
    out = engine.generate([prompts[0], huge, prompts[1]], sampling)
    assert isinstance(out[1], Refusal)
    assert "/data/huge.png" in out[1].reason and "maximum model length" in out[1].reason, out[1].reason
    check_groups(engine, [out[0], out[2]], 2, sampling.group_size, sampling.max_new_tokens)


def test_engine_that_cannot_start_says_why(model_cfg, rollout_cfg, monkeypatch):
    from raytrain.engines.vllm_engine import VLLMEngine, environment_problem, torch_requirement

    assert environment_problem(torch_version=torch.__version__, requirement=torch_requirement(), media=True) is None
    wrong = environment_problem(torch_version="2.14.1", requirement=torch_requirement(), media=False)
    assert "needs torch==2.13.0+cpu" in wrong and "torch 2.14.1" in wrong, wrong
    monkeypatch.setitem(sys.modules, "torchvision", None)  # torchvision absent: its import fails
    with pytest.raises(RuntimeError, match="needs torchvision, and torchvision does not import here"):
        VLLMEngine(model_cfg, rollout_cfg)


def _corruptions(state: dict[str, torch.Tensor]):
    name = sorted(state)[0]
    missing = {k: v for k, v in state.items() if k != name}
    extra = {**state, "model.not_a_layer.weight": torch.zeros(2, 2)}
    shaped = {**state, name: torch.zeros(*state[name].shape, 2)}
    return {"missing": (name, missing), "unexpected": ("model.not_a_layer.weight", extra), "wrong shape": (name, shaped)}


@pytest.mark.parametrize("kind", ["missing", "unexpected", "wrong shape"])
def test_mismatched_sync_refused(engine, family, prompts, rollout_cfg, kind):
    before = greedy_tokens(engine, prompts, rollout_cfg.sampling)
    key, bad = _corruptions(sync_state(build_tiny_model(family.processor, seed=1)))[kind]
    with pytest.raises(ValueError) as exc:
        push_weights(LocalEngines([engine]), bad, version=1, bucket_bytes=BUCKET_BYTES)
    assert kind in str(exc.value) and key in str(exc.value), str(exc.value)
    assert engine.version == 0
    # Refused before any tensor was loaded: the engine still serves the original weights.
    assert greedy_tokens(engine, prompts, rollout_cfg.sampling) == before


def test_full_weight_sync(engine, hf_engine, family, trainer_model, prompts, rollout_cfg):
    """New weights (the vision tower's too) change vLLM's answers to transformers' with the same weights."""
    sampling = rollout_cfg.sampling
    before = greedy_tokens(engine, prompts, sampling)
    state = sync_state(build_tiny_model(family.processor, seed=1))
    assert len(list(buckets(state, BUCKET_BYTES))) > 2

    push_weights(LocalEngines([engine, hf_engine]), state, version=1, bucket_bytes=BUCKET_BYTES)
    assert engine.version == hf_engine.version == 1
    after = greedy_tokens(engine, prompts, sampling)
    assert after == greedy_tokens(hf_engine, prompts, sampling)
    assert after != before, "a differently seeded model should answer differently"
    assert {s.version for g in engine.generate(prompts[:2], sampling) for s in g} == {1}

    # Back to the first weights as version 2: the reload is complete, nothing of version 1 lingers
    # (layer post-processing, the prefix and encoder caches included).
    push_weights(LocalEngines([engine, hf_engine]), sync_state(trainer_model), version=2, bucket_bytes=BUCKET_BYTES)
    assert engine.version == 2
    assert greedy_tokens(engine, prompts, sampling) == before


def test_incomplete_sync_does_not_advance(engine, trainer_model, prompts, rollout_cfg):
    """Buckets announced but never sent: the sync fails loudly and the version stays."""
    state = sync_state(trainer_model)
    served = engine.version
    engine.begin_update(served + 1, {k: tuple(v.shape) for k, v in state.items()})
    engine.load_bucket(next(iter(buckets(state, BUCKET_BYTES))))
    with pytest.raises(ValueError, match="incomplete"):
        engine.finish_update()
    assert engine.version == served
    with pytest.raises(RuntimeError, match="serves no single weight version"):
        engine.generate(prompts, rollout_cfg.sampling, greedy=True)
    # A complete sync heals it.
    before = engine.version
    push_weights(LocalEngines([engine]), state, version=served + 2, bucket_bytes=BUCKET_BYTES)
    assert engine.version == served + 2 != before


@pytest.fixture
def engine_core_serialisation(engine, monkeypatch):
    """The tests run vLLM's engine core in this process; on GPUs it runs in another, and worker RPC
    arguments cross msgpack (no dataclasses, tuples become lists). Send them through it here too."""
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    rpc, encoder, decoder = engine.llm.collective_rpc, MsgpackEncoder(), MsgpackDecoder()

    def serialised(method, timeout=None, args=(), kwargs=None):
        return rpc(method, timeout=timeout, args=tuple(decoder.decode(encoder.encode(list(args)))), kwargs=kwargs)

    monkeypatch.setattr(engine.llm, "collective_rpc", serialised)


def test_full_weight_sync_by_broadcast(engine, hf_engine, family, trainer_model, prompts, rollout_cfg, engine_core_serialisation):
    """The GPU path's code over gloo: this thread is rank 0 of a weight group, vLLM's worker receives
    each bucket straight from the broadcast and loads it."""
    sampling = rollout_cfg.sampling
    engines = LocalEngines([engine])
    group = open_weight_group(engines, "gloo", timeout_s=60.0)
    served = engine.version
    new = sync_state(build_tiny_model(family.processor, seed=2))
    push_weights(engines, new, served + 1, BUCKET_BYTES, group)
    assert engine.version == served + 1
    push_weights(LocalEngines([hf_engine]), new, hf_engine.version + 1, BUCKET_BYTES)
    trained = greedy_tokens(hf_engine, prompts, sampling)
    assert greedy_tokens(engine, prompts, sampling) == trained

    state = sync_state(trainer_model)
    check_unannounced_bucket_refused_without_stalling(engine, group, state, BUCKET_BYTES)
    assert greedy_tokens(engine, prompts, sampling) == trained

    # A restarted sender opens a new group; the engine joins it in place of the old one, and a sync
    # announced for the old group is refused before anything is broadcast.
    old, group = group.address, open_weight_group(engines, "gloo", timeout_s=60.0)
    with pytest.raises(RuntimeError, match="not in the sender's weight group"):
        engine.begin_update(served + 3, {k: tuple(v.shape) for k, v in state.items()}, old)
    push_weights(engines, state, served + 3, BUCKET_BYTES, group)
    assert engine.version == served + 3
