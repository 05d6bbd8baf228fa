"""DX-LLaVA (raytrain.models.dx_llava) against the official description (SPEC section 7): the real config's
shapes without weights, the head, the loss weighting, the stage-1 freeze through the trainer's DeepSpeed step,
the safetensors round trip without trust_remote_code, and what weight sync sends."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlavaProcessor

from raytrain.config import parse_config
from raytrain.config.sections import ModelConfig
from raytrain.data.batch import Prompt
from raytrain.data.sft_targets import sft_batch
from raytrain.models.dx_llava import DxLlavaConfig, DxLlavaForConditionalGeneration, build_processor
from raytrain.models.loading import export_weights, load_family, load_policy, sync_spec, sync_state
from raytrain.models.tiny import _train_llama_tokenizer
from raytrain.train.algorithms import ALGORITHMS
from raytrain.train.step import micro_batch_loss


@pytest.fixture(scope="module")
def cfg(tiny_dx_llava_dir) -> ModelConfig:
    return ModelConfig(path=str(tiny_dx_llava_dir), dtype="float32")


@pytest.fixture(scope="module")
def family(cfg):
    return load_family(cfg)


@pytest.fixture(scope="module")
def prompts(family) -> list[Prompt]:
    """A fake and a real image asked about, as the prompt stage encodes them."""
    rng = np.random.default_rng(0)
    out = []
    for i, label in enumerate(("fake", "real")):
        image = rng.integers(0, 256, (1, 48 + 16 * i, 80, 3), dtype=np.uint8)
        encoded = family.encode_prompt(family.chat_text("Is this image real or fake?", "image"), image, False, None, None)
        out.append(Prompt(key=str(i), id=str(i), path="", label=label, category="c", is_video=False, **{
            k: encoded[k] for k in ("input_ids", "pixel_values", "grid_thw")}))
    return out


def _sft_config(raw: dict, model_dir, **model):
    raw = {**raw, "model": {**raw["model"], "path": str(model_dir), **model}, "algorithm": {"name": "sft"}}
    return parse_config(raw)


def test_real_config_gives_100_image_tokens_from_320_px_without_weights():
    """The official tower (OpenCLIP convnext_large_d_320) and a LLaMA-7B, built on the meta device."""
    config = DxLlavaConfig(text_config=LlamaConfig().to_dict())
    assert (config.vision_tower, config.vision_pretrained) == ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup")
    assert (config.image_size, config.num_image_tokens, config.mm_hidden_size) == (320, 100, 1536)
    with torch.device("meta"):
        model = DxLlavaForConditionalGeneration(config)
        tokens = model.image_tokens(torch.empty(2, 3, 320, 320))
    assert tokens.shape == (2, 100, 4096)
    first, gelu, second = model.projector
    assert (first.in_features, first.out_features, second.in_features, second.out_features) == (1536, 4096, 4096, 4096)
    assert isinstance(gelu, torch.nn.GELU)
    assert len(model.vision_tower.stages) == 4
    # The processor gives the prompt one placeholder per image token.
    processor = build_processor(_train_llama_tokenizer(), config.image_size)
    out = processor(text=["<image>\nIs it fake?"], images=[np.zeros((400, 300, 3), np.uint8)], return_tensors="np")
    assert out["pixel_values"].shape == (1, 3, 320, 320)
    assert int((out["input_ids"] == processor.image_token_id).sum()) == 100


def test_head_layers_clamp_and_xavier_init(cfg):
    model = load_policy(cfg)
    head, hidden = model.head.requires_grad_(False), model.config.text_config.hidden_size
    assert (head.fc1.in_features, head.fc1.out_features, head.fc2.in_features, head.fc2.out_features) == (hidden, 512, 512, 1)
    for linear in (head.fc1, head.fc2):
        bound = math.sqrt(6 / (linear.in_features + linear.out_features))  # Xavier uniform's bound
        assert float(linear.weight.abs().max()) <= bound
        assert float(linear.weight.abs().max()) > 0.9 * bound
        assert not linear.bias.any()
    tokens = 40 * torch.randn(3, 4, hidden)
    expected = head.fc2(torch.relu(head.fc1(tokens.clamp(-10, 10).mean(1)))).squeeze(-1)
    unclamped = head.fc2(torch.relu(head.fc1(tokens.mean(1)))).squeeze(-1)
    torch.testing.assert_close(head(tokens), expected)
    assert not torch.allclose(head(tokens), unclamped)


def test_prompt_is_llava_v1_with_the_image_expanded_and_the_turn_ending_with_eos(family, prompts):
    text = family.chat_text("Q?", "image")
    assert text.endswith(" USER: <image>\nQ? ASSISTANT:") and text.startswith("A chat between a curious user")
    ids = prompts[0].input_ids
    assert int((ids == family.processor.image_token_id).sum()) == 4  # 64 px / 32 = 2 x 2
    assert family.suppress_ids == [family.processor.image_token_id]
    assert family.tokenizer.convert_ids_to_tokens(family.end_id) == "</s>"
    assert prompts[0].pixel_values.shape == (3, 64, 64) and 0 <= prompts[0].pixel_values.min() <= prompts[0].pixel_values.max() <= 1


def test_sft_loss_is_lm_plus_weighted_head_bce_on_the_head_view(base_config_dict, tiny_dx_llava_dir, family, prompts):
    cfg = _sft_config(base_config_dict, tiny_dx_llava_dir)
    model = load_policy(cfg.model)
    batch = sft_batch(cfg, prompts, family.tokenizer, family.end_id)
    (inputs,) = batch.micro_batches(len(batch), family.collate)
    assert not torch.equal(inputs["pixel_values"], inputs["head_pixel_values"])  # its own augmented view
    assert inputs["binary_labels"].tolist() == [1.0, 0.0]
    # `model.head_augment: false` (the tiny recipe's): the head sees the generation view.
    plain = load_family(cfg.model.model_copy(update={"head_augment": False}))
    assert not plain.augment_head and family.augment_head
    (unaugmented,) = batch.micro_batches(len(batch), plain.collate)
    assert torch.equal(unaugmented["pixel_values"], unaugmented["head_pixel_values"])
    tokens, seqs = float(inputs["loss_mask"].sum()), 2.0
    sft = ALGORITHMS["sft"]
    losses = {}
    for weight in (0.0, 10.0):
        run = cfg.model_copy(update={"model": cfg.model.model_copy(update={"head_loss_weight": weight})})
        with torch.no_grad():
            losses[weight], stats = micro_batch_loss(run, sft, family, model, None, inputs, tokens, seqs)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(model.head_logits(inputs["head_pixel_values"]),
                                                               inputs["binary_labels"])
    torch.testing.assert_close(losses[10.0] - losses[0.0], 10 * bce.detach(), rtol=1e-4, atol=1e-6)
    assert stats["head_bce_sum"] == pytest.approx(2 * float(bce.detach()), rel=1e-4) and stats["head_rows_sum"] == 2
    # RL steps leave the head alone.
    with torch.no_grad():
        rl, rl_stats = micro_batch_loss(run, ALGORITHMS["dapo"], family, model, None,
                                        {**inputs, "old_logprobs": torch.zeros_like(inputs["loss_mask"]),
                                         "advantages": torch.zeros_like(inputs["loss_mask"])}, tokens, seqs)
    assert "head_bce_sum" not in rl_stats


def test_stage1_step_through_the_trainer_moves_only_projector_and_head(base_config_dict, tiny_dx_llava_dir, family, prompts,
                                                                         gloo_rank):
    """One SFT step of the worker (`train_step` under DeepSpeed, one gloo rank) with `model.trainable:
    [projector, head]`: the tower and the language model stay bitwise equal."""
    import deepspeed

    from raytrain.train.step import deepspeed_config, train_step

    cfg = _sft_config(base_config_dict, tiny_dx_llava_dir, trainable=["projector", "head"])
    cfg.train.lr = 1e-2
    model = load_policy(cfg.model)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projector", "head"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg))
    batch = sft_batch(cfg, prompts, family.tokenizer, family.end_id)
    (padding,) = family.padding_batch().micro_batches(1, family.collate)
    tokens = float(batch.per_token["loss_mask"].sum())
    stats = train_step(cfg, ALGORITHMS["sft"], family, engine, None, batch, tokens, 2.0, 1, padding)
    report = ALGORITHMS["sft"].report({**stats, "prompts": 2.0}, tokens)
    assert report["head_bce"] > 0 and 0 <= report["head_accuracy"] <= 1
    after = engine.module.state_dict()
    for name, value in before.items():
        moved = not torch.equal(value, after[name])
        if name.startswith(("vision_tower.", "language_model.")):
            assert not moved, name
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("projector."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head."))


def test_save_and_load_without_trust_remote_code(cfg, tmp_path, prompts, family):
    model = load_policy(cfg)
    with torch.no_grad():
        model.head.fc2.bias.fill_(0.25)
    out = export_weights(model, family.processor, tmp_path / "export")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    loaded = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)  # trust_remote_code off
    assert isinstance(loaded, DxLlavaForConditionalGeneration)
    state = loaded.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    processor = AutoProcessor.from_pretrained(out)
    assert isinstance(processor, LlavaProcessor) and processor.image_token == "<image>"
    probs = load_family(cfg.model_copy(update={"path": str(out)})).head_probs(loaded, prompts)
    expected = torch.sigmoid(model.head_logits(family.normalize(family.pixels(prompts)))).tolist()
    assert probs == pytest.approx(expected)


def test_weight_sync_never_carries_the_frozen_tower(cfg):
    full = sync_state(load_policy(cfg))
    assert {k.split(".")[0] for k in full} == {"projector", "head", "language_model"}
    assert set(sync_spec(cfg)) == set(full)
    lora_cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": True, "r": 2})})
    lora = load_policy(lora_cfg)
    trains = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trains and all("lora_" in n or ".projector." in n or ".head." in n for n in trains)
    assert any(".projector." in n for n in trains) and any(".head." in n for n in trains)
    adapter = sync_state(lora)
    assert set(sync_spec(lora_cfg)) == set(adapter)
    assert not any("vision_tower" in k for k in adapter) and any("lora_A" in k for k in adapter)


@pytest.mark.parametrize("name, message", [("tower", "no top-level submodule"), ("vision_tower", "stays frozen")])
def test_trainable_names_are_checked(cfg, name, message):
    with pytest.raises(ValueError, match=message):
        load_policy(cfg.model_copy(update={"trainable": [name]}))


def test_transformers_engine_generates_and_reports_the_head(cfg, prompts):
    from raytrain.config.sections import SamplingConfig
    from raytrain.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(cfg)
    assert not any(k.startswith("vision_tower.") for k in engine.sync_spec())
    ((sample,),) = engine.generate(prompts[:1], SamplingConfig(max_new_tokens=4), greedy=True)
    assert 1 <= len(sample.token_ids) <= 4 and engine.family.processor.image_token_id not in sample.token_ids
    (prob,) = engine.head_probs(prompts[:1])
    assert 0 < prob < 1


def test_built_from_a_llava_checkpoint_drops_its_tower_and_projector(tmp_path):
    """`build_dx_llava` on a LLaVA-shaped LLaMA folder (its config's `mm_*` keys, its CLIP tower's and
    projector's weights beside the LM's): the LM weights carry over, `<image>` is added, the rest is dropped."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from raytrain.models.dx_llava import build_dx_llava
    from raytrain.models.tiny import TINY_TOWER, TINY_TOWER_CONFIG, _train_llama_tokenizer

    tokenizer = _train_llama_tokenizer()
    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>", bos_token="<s>",
                                    eos_token="</s>")
    llava = tmp_path / "llava"
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
    lm.save_pretrained(llava)
    plain.save_pretrained(llava)
    weights = load_file(llava / "model.safetensors")
    save_file({**weights, "model.mm_projector.0.weight": torch.zeros(64, 1024),
               "model.vision_tower.vision_tower.embeddings.patch_embedding.weight": torch.zeros(8, 3, 14, 14)},
              llava / "model.safetensors", metadata={"format": "pt"})
    raw = json.loads((llava / "config.json").read_text())
    (llava / "config.json").write_text(json.dumps({**raw, "model_type": "llava_llama", "mm_hidden_size": 1024,
                                                   "mm_vision_tower": "openai/clip-vit-large-patch14-336"}))
    out = build_dx_llava(str(llava), tmp_path / "dx", vision_tower=TINY_TOWER, vision_pretrained=None,
                         vision_tower_config=TINY_TOWER_CONFIG, dtype=torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    assert model.config.mm_hidden_size == 320 and model.config.text_config.model_type == "llama"
    state = model.state_dict()
    assert torch.equal(state["language_model.model.layers.0.self_attn.q_proj.weight"], weights["model.layers.0.self_attn.q_proj.weight"])
    assert not any("mm_projector" in k for k in state)
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
