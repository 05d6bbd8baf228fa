"""The model-family interface: a checkpoint's family by its `model_type`, and what Qwen2.5-VL's says."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from raytrain.config.sections import LoraConfig, ModelConfig
from raytrain.models.loading import FAMILIES, family_class, load_family, load_policy, wrap_lora
from raytrain.models.qwen2_5_vl import Qwen2_5_VL, Qwen2Text
from raytrain.models.tiny import save_tiny_text_model


@pytest.fixture(scope="module")
def family(tiny_model_dir):
    return load_family(ModelConfig(path=str(tiny_model_dir), dtype="float32"))


def test_family_chosen_by_model_type(tiny_model_dir, tmp_path):
    assert type(load_family(ModelConfig(path=str(tiny_model_dir)))) is Qwen2_5_VL
    assert family_class(AutoConfig.from_pretrained(save_tiny_text_model(tmp_path / "text"))) is Qwen2Text
    assert set(FAMILIES) == {"qwen2_5_vl", "qwen2"}


def test_unknown_model_type_is_refused_by_name():
    with pytest.raises(ValueError, match=r"model type 'llama' has no model family here \(known: qwen2, qwen2_5_vl\)"):
        family_class(AutoConfig.for_model("llama"))


def test_vision_special_tokens_are_suppressed_and_the_turn_ends_with_im_end(family):
    tok = family.tokenizer
    names = {tok.convert_ids_to_tokens(i) for i in family.suppress_ids}
    assert names == {"<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"}
    assert family.end_id == tok.convert_tokens_to_ids("<|im_end|>")


def test_lora_goes_on_the_language_model_only(tiny_model_dir, tmp_path):
    lora = LoraConfig(enabled=True, r=2)
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32", lora=lora)
    model = wrap_lora(load_policy(cfg.model_copy(update={"lora": LoraConfig()})), cfg)
    adapted = {name for name, _ in model.named_modules() if name.endswith("lora_A")}
    assert adapted and all(".language_model." in name for name in adapted)
    assert not any(".visual." in name for name in adapted)
    text_cfg = ModelConfig(path=str(save_tiny_text_model(tmp_path / "text")), dtype="float32")
    text = wrap_lora(load_policy(text_cfg), text_cfg.model_copy(update={"lora": lora}))
    assert any(name.endswith("lora_A") for name, _ in text.named_modules())  # a model without a tower: adapters anywhere


def test_padding_batch_runs_the_vision_tower_with_an_empty_loss(family, tiny_model_dir):
    model = load_policy(ModelConfig(path=str(tiny_model_dir), dtype="float32"))
    padding = family.padding_batch()
    (inputs,) = padding.micro_batches(1, family.collate)
    assert inputs["loss_mask"].sum() == 0 and "pixel_values" in inputs
    calls = []
    hook = model.model.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            family.logits(model, {k: v for k, v in inputs.items() if k not in ("old_logprobs", "advantages", "loss_mask")})
    finally:
        hook.remove()
    assert calls == [1]


def test_collate_marks_media_token_types_and_response_positions(family, media_prompts):
    prompts, responses = media_prompts[:2], [[5, 6, 7], [8]]
    batch = family.collate(prompts, responses)
    ids = batch["input_ids"]
    assert torch.equal(batch["mm_token_type_ids"] == 2, ids == family.video_token_id)
    assert batch["response_mask"].sum(-1).tolist() == [3, 1]
    assert "pixel_values_videos" in batch and batch["video_grid_thw"].shape[0] == 2
