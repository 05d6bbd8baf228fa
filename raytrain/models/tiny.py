"""A tiny, randomly initialised Qwen2.5-VL for CPU tests and the demo.

Everything is built locally (no model hub): a byte-level BPE tokenizer trained on
prompt-like text with Qwen's chat and vision special tokens and the `<think>` /
`<answer>` tags, the real transformers processor classes, and a
`Qwen2_5_VLForConditionalGeneration` small enough to train on two CPU cores.
The result is an ordinary Hugging Face folder: `from_pretrained` loads it exactly
like `Qwen/Qwen2.5-VL-7B-Instruct`, so the code under test is the production code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Ordinary (non-special) added tokens: they survive decoding, as in Qwen's vocabulary.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

# Qwen2-VL's chat template (system prompt, vision placeholders, generation prompt).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the tokenizer learns its merges from: the words our prompts and responses use.
_CORPUS = [
    "You are a helpful assistant.",
    "Is this video real or fake? Look at faces, lips, textures and motion.",
    "Is this image real or fake? Answer with real or fake.",
    "/think /no_think A) real B) fake \\boxed{A} \\boxed{B}",
    "The face boundary shows a blending seam, so the video is fake.",
    "The lips move out of sync with the face; the texture repeats like a generator grid.",
    "Lighting, skin and motion look natural and consistent, so it is real.",
    "I look at the frames.",
    # Answers follow a tag, so the words are learned without a leading space.
    "<think>I look at the frames.</think><answer>real</answer>",
    "<think>I look at the frames.</think><answer>fake</answer>",
]


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.add_tokens(TAG_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_processor(*, max_pixels: int = 56 * 56, min_pixels: int = 28 * 28, vocab_size: int = 512) -> Qwen2_5_VLProcessor:
    """Processor with the real Qwen2-VL image/video processors and a locally trained tokenizer."""
    pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=_train_tokenizer(vocab_size),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(processor: Qwen2_5_VLProcessor, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL with head_dim 32 (vLLM's minimum), two text and two vision layers."""
    tokenizer = processor.tokenizer
    head_dim = 32
    heads = hidden_size // head_dim
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width).
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            bos_token_id=None,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=layers,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_heads=heads,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[layers - 1],
            window_size=112,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(out: Path, *, seed: int = 0) -> Path:
    """Build and save model + processor to `out` (safetensors)."""
    out = Path(out)
    processor = build_tiny_processor()
    model = build_tiny_model(processor, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def save_tiny_clip(out: Path, *, dim: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny random CLIP (transformers `CLIPModel`, safetensors) with its tokenizer and image processor:
    the local stand-in for PRPO's OpenCLIP ConvNeXt-L-D-320, loaded by path like any CLIP folder."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = _train_tokenizer(512)
    # CLIP pools the text at its end-of-text token, which real CLIP tokenizers append themselves.
    eos = "<|im_end|>"
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, eos_id)])
    layers = dict(hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(**layers, vocab_size=len(tokenizer), max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_id, bos_token_id=None),
        vision_config=dict(**layers, image_size=image_size, patch_size=image_size // 4),
        projection_dim=dim // 2,
    )
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def build_tiny_text_model(tokenizer: PreTrainedTokenizerFast, *, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Qwen2ForCausalLM:
    """The language half of the tiny model as a text-only Qwen2 (head_dim 32): what vLLM on CPU can
    load, since no torchvision exists for its torch build and so its Qwen2-VL classes cannot import."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=hidden_size // 32,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_text_model(out: Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """Build and save the text-only model with the tiny tokenizer (and its chat template) to `out`."""
    out = Path(out)
    tokenizer = _train_tokenizer(vocab_size=512)  # the VL model's tokenizer, so prompts tokenize alike
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_text_model(tokenizer, hidden_size=hidden_size, layers=layers, seed=seed).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# The tiny DX-LLaVA's OpenCLIP model: the real one's shape (a timm ConvNeXt trunk, stride 32) with timm's
# smallest ConvNeXt, at 64 px (2 x 2 = 4 image tokens). Its text tower is built and dropped, as the real one's.
TINY_TOWER = "dx_llava_tiny_convnext"
TINY_TOWER_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "", "timm_proj": "mlp",
                   "timm_drop": 0.0, "timm_drop_path": 0.0, "image_size": 64},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
_LLAVA_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    " USER: Is this image real or fake? ASSISTANT:",
    " **Cue**: The texture repeats like a generator grid and the edges are too smooth.\n\n### Answer: fake",
    " **Cue**: Lighting, noise and edges look natural and consistent.\n\n### Answer: real",
    "Answer: real Answer: fake",
]


def _train_llama_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE with LLaMA's special tokens (`<unk>`, `<s>` prepended, `</s>` ending a turn) and `<image>`."""
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_LLAVA_CORPUS * 20, trainer=trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>", additional_special_tokens=["<image>"])


def save_tiny_dx_llava(out: Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """A tiny random DX-LLaVA (tiny ConvNeXt tower, tiny LLaMA with head_dim 32, the official projector and
    head) with its processor, saved like a real one (safetensors): `from_pretrained` loads it by path."""
    from transformers import LlamaConfig

    from raytrain.models.dx_llava import END_TOKEN, IMAGE_TOKEN, DxLlavaConfig, DxLlavaForConditionalGeneration, build_processor

    tokenizer = _train_llama_tokenizer()
    processor = build_processor(tokenizer, TINY_TOWER_CONFIG["vision_cfg"]["image_size"])
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                       num_hidden_layers=layers, num_attention_heads=hidden_size // 32, num_key_value_heads=1,
                       max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.convert_tokens_to_ids(END_TOKEN), pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    config = DxLlavaConfig(text_config=text.to_dict(), vision_tower=TINY_TOWER, vision_pretrained=None,
                           vision_tower_config=TINY_TOWER_CONFIG, mm_hidden_size=320,  # convnext_atto's last stage
                           image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    torch.manual_seed(seed)
    model = DxLlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = text.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
