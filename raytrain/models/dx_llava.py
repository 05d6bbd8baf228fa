"""DX-LLaVA (Nguyen et al. 2025, "PRPO: Paragraph-level Policy Optimization for Vision-Language Deepfake
Detection", SPEC section 7): LLaVA-1.5 whose vision tower is a frozen OpenCLIP ConvNeXt, with a two-layer
GELU projector and a binary real/fake head; and its model family.

Read from the official code (`tuanrpt/PRPO`, the DX-LLaVA training code) and written anew:
- Tower: OpenCLIP `convnext_large_d_320` (pretrained `laion2b_s29b_b131k_ft_soup`), frozen; the stem and
  all four trunk stages run, and the 1536-channel map of a 320 px image (stride 32: 10 x 10) is flattened
  into 100 image tokens.
- Projector `mlp2x_gelu`: Linear(mm_hidden, hidden), GELU, Linear(hidden, hidden).
- Language model: LLaMA/Vicuna (`LlamaForCausalLM`), from `liuhaotian/llava-v1.5-7b` (its CLIP tower and
  projector dropped) or any LLaMA checkpoint (`build_dx_llava`).
- Head: the projected image tokens clamped to [-10, 10], mean-pooled, Linear(hidden, 512), ReLU,
  Linear(512, 1), Xavier init. Its logit is P(fake); it trains with BCE beside the LM loss
  (`model.head_loss_weight`, 10 officially) on its own augmented view of the image (`head_view`).

`DxLlavaForConditionalGeneration` is an ordinary transformers model registered with the Auto classes
when this module is imported (`raytrain.models.loading` does), so `from_pretrained` loads a saved one
(safetensors, tower included) without `trust_remote_code`. The tower is built by its OpenCLIP name from
the OpenCLIP model config stored in the model's config (`vision_tower_config`): the real one is
OpenCLIP's own `convnext_large_d_320`, the tests' tiny one a registered config whose trunk is timm's
`convnext_atto`, through the same code.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessor,
    GenerationMixin,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaProcessor,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_outputs import ModelOutput

from raytrain.data.batch import Prompt, TrainBatch, response_positions
from raytrain.models.family import ModelFamily, VLLMServing

IMAGE_TOKEN = "<image>"
END_TOKEN = "</s>"  # LLaVA v1's sep2: ends an assistant turn
# LLaVA v1 (`conv_vicuna_v1`): system line, `USER: <image>\n{question} ASSISTANT:`, answers end with `</s>`.
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
CHAT_TEMPLATE = (
    SYSTEM
    + "{% for message in messages %}"
    "{% if message['role'] == 'user' %} USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif 'text' in c %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% elif message['role'] == 'assistant' %} ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
LM_PREFIX = "language_model."  # the LLaMA's tensors in a DX-LLaVA checkpoint and in a sync
EMBED_KEY = LM_PREFIX + "model.embed_tokens.weight"
TOWER_STRIDE = 32  # ConvNeXt: a stride-4 stem and three stride-2 downsamples
HEAD_CLAMP = 10.0  # the official head clamps the projected tokens to [-10, 10]
# OpenCLIP's (OpenAI) normalisation of `convnext_large_d_320`; its preprocessing is a bicubic resize of
# the short side to 320 and a 320 px centre crop.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@strict
class DxLlavaConfig(PreTrainedConfig):
    """DX-LLaVA: a LLaMA `text_config`, the OpenCLIP tower by name, the projector and the head."""

    model_type = "dx_llava"
    sub_configs = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_tower: str = "convnext_large_d_320"  # OpenCLIP model name
    vision_pretrained: str | None = "laion2b_s29b_b131k_ft_soup"  # OpenCLIP tag of the tower's weights
    # OpenCLIP's model config of `vision_tower` (null: OpenCLIP's registered one); stored so that a saved
    # model rebuilds its tower without OpenCLIP knowing the name (the tiny test tower).
    vision_tower_config: dict | None = None
    mm_hidden_size: int = 1536  # the tower's channels (ConvNeXt-Large's last stage)
    projector_type: str = "mlp2x_gelu"
    head_hidden_size: int = 512
    image_token_id: int = 32000
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # By hand rather than through transformers' sub-config defaults, which differ between 5.19 (the
        # vLLM environment's) and 5.23.
        if isinstance(self.text_config, dict):
            self.text_config = LlamaConfig(**{k: v for k, v in self.text_config.items() if k != "model_type"})
        elif self.text_config is None:
            self.text_config = LlamaConfig()
        super().__post_init__(**kwargs)

    def tower_config(self) -> dict:
        if self.vision_tower_config is not None:
            return self.vision_tower_config
        import open_clip

        config = open_clip.get_model_config(self.vision_tower)
        if config is None:
            raise ValueError(f"OpenCLIP has no model named {self.vision_tower!r}")
        return config

    @property
    def image_size(self) -> int:
        size = self.tower_config()["vision_cfg"]["image_size"]
        return size if isinstance(size, int) else size[0]

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // TOWER_STRIDE) ** 2


def open_clip_trunk(name: str, tower_config: dict, pretrained: str | None = None) -> nn.Module:
    """The timm ConvNeXt trunk of OpenCLIP model `name` whose OpenCLIP config is `tower_config` (`pretrained`:
    an OpenCLIP weight tag to download; None builds it randomly, as `from_pretrained` does before loading
    the saved weights)."""
    import open_clip

    if open_clip.get_model_config(name) != tower_config:
        # OpenCLIP registers model configs from files: the stored config under the stored name.
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"{name}.json"
            path.write_text(json.dumps(tower_config))
            open_clip.add_model_config(path)
    # Built where the caller builds (transformers builds on the meta device before loading weights).
    device = torch.empty(0).device
    return open_clip.create_model(name, pretrained=pretrained, device=device).visual.trunk


class XavierLinear(nn.Linear):
    """A linear layer of the head: Xavier-uniform weights and zero bias at init (the official head's)."""


class BinaryHead(nn.Module):
    """The official head: Linear(hidden, 512), ReLU, Linear(512, 1) on the mean-pooled clamped tokens."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.fc1 = XavierLinear(hidden, width)
        self.fc2 = XavierLinear(width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = tokens.clamp(-HEAD_CLAMP, HEAD_CLAMP).mean(dim=1)
        return self.fc2(torch.relu(self.fc1(pooled))).squeeze(-1)


def build_projector(config: DxLlavaConfig) -> nn.Sequential:
    if config.projector_type != "mlp2x_gelu":
        raise ValueError(f"projector_type {config.projector_type!r}: only mlp2x_gelu (the official one) is built")
    hidden = config.text_config.hidden_size
    return nn.Sequential(nn.Linear(config.mm_hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden))


@dataclass
class DxLlavaOutput(ModelOutput):
    logits: torch.Tensor | None = None
    past_key_values: object | None = None
    head_logits: torch.Tensor | None = None  # [B]: the binary head's logit of fake, when head pixels were given


class DxLlavaForConditionalGeneration(PreTrainedModel, GenerationMixin):
    """Top-level submodules (what `model.trainable` names): `vision_tower` (always frozen), `projector`,
    `head`, `language_model`."""

    config_class = DxLlavaConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: DxLlavaConfig):
        super().__init__(config)
        self.vision_tower = open_clip_trunk(config.vision_tower, config.tower_config()).requires_grad_(False)
        if self.vision_tower.num_features != config.mm_hidden_size:
            raise ValueError(f"tower {config.vision_tower!r} has {self.vision_tower.num_features} channels, "
                             f"the config's mm_hidden_size is {config.mm_hidden_size}")
        self.projector = build_projector(config)
        self.head = BinaryHead(config.text_config.hidden_size, config.head_hidden_size)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, XavierLinear):
            init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def train(self, mode: bool = True):
        # The tower is frozen: no stochastic depth or other train-mode behaviour in it, ever.
        super().train(mode)
        self.vision_tower.eval()
        return self

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised pixels -> [B, (S/32)^2, hidden] projected image tokens."""
        with torch.no_grad():
            stem = self.vision_tower.stem[0].weight
            x = self.vision_tower.stages(self.vision_tower.stem(pixel_values.to(stem.device, stem.dtype)))
        return self.projector(x.flatten(2).transpose(1, 2).to(self.projector[0].weight.dtype))

    def head_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B] logits of fake for [B, 3, S, S] pixels."""
        return self.head(self.image_tokens(pixel_values))

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the `<image>` placeholders replaced by the image tokens, in order."""
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.image_token_id
        if image_tokens is None:
            if slots.any():
                raise ValueError("the prompt holds <image> tokens but no pixel_values were given")
            return embeds
        if int(slots.sum()) != image_tokens.shape[0] * image_tokens.shape[1]:
            raise ValueError(f"{int(slots.sum())} <image> tokens for {image_tokens.shape[0]} images of "
                             f"{image_tokens.shape[1]} tokens each")
        return embeds.masked_scatter(slots.unsqueeze(-1), image_tokens.to(embeds.dtype))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, inputs_embeds=None,
                pixel_values=None, head_pixel_values=None, use_cache=None, logits_to_keep=0, **kwargs) -> DxLlavaOutput:
        """`pixel_values`: the generation view; `head_pixel_values`: the head's own view (its logits come back
        as `head_logits`). Both go through the tower in one call."""
        tokens = head_tokens = None
        if pixel_values is not None or head_pixel_values is not None:
            views = [v for v in (pixel_values, head_pixel_values) if v is not None]
            encoded = self.image_tokens(torch.cat(views))
            if pixel_values is not None:
                tokens, encoded = encoded[: len(pixel_values)], encoded[len(pixel_values):]
            head_tokens = encoded if head_pixel_values is not None else None
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, tokens)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep,
                                  **kwargs)
        return DxLlavaOutput(logits=out.logits, past_key_values=out.past_key_values,
                             head_logits=None if head_tokens is None else self.head(head_tokens))


AutoConfig.register("dx_llava", DxLlavaConfig)
AutoModelForImageTextToText.register(DxLlavaConfig, DxLlavaForConditionalGeneration)
AutoProcessor.register(DxLlavaConfig, LlavaProcessor)


def build_processor(tokenizer, image_size: int) -> LlavaProcessor:
    """transformers' LLaVA processor for DX-LLaVA: `tokenizer` (given the `<image>` token, the v1 chat
    template and `</s>` as its end) and OpenCLIP's preprocessing as a CLIP image processor; each `<image>`
    becomes (size / 32)^2 placeholders."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or END_TOKEN
    tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),  # 3: bicubic, as OpenCLIP
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=TOWER_STRIDE,
                          vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def _llama_config(source: str) -> LlamaConfig:
    """The LLaMA config of a LLaMA or LLaVA checkpoint: LLaVA's `mm_*` and other keys of its own left out."""
    raw, _ = LlamaConfig.get_config_dict(source)
    known = LlamaConfig().to_dict()
    return LlamaConfig(**{k: v for k, v in raw.items() if k in known and k not in ("model_type", "architectures")})


def build_dx_llava(language_model: str, out: str | Path, *, vision_tower: str = "convnext_large_d_320",
                   vision_pretrained: str | None = "laion2b_s29b_b131k_ft_soup", vision_tower_config: dict | None = None,
                   dtype: torch.dtype = torch.bfloat16) -> Path:
    """A fresh DX-LLaVA folder from a language model and an OpenCLIP tower, both by name or path: the LM of
    `language_model` (a LLaMA, or `liuhaotian/llava-v1.5-7b` whose CLIP tower and projector weights are
    dropped), the tower `vision_tower` with the OpenCLIP weights `vision_pretrained`, a new projector
    (torch's default init, as LLaVA's) and head (Xavier). The tokenizer gains `<image>`."""
    from transformers import AutoTokenizer

    text_config = _llama_config(language_model)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    lm = LlamaForCausalLM.from_pretrained(language_model, config=text_config, dtype=dtype)  # extra LLaVA keys: dropped
    if vision_tower_config is None:
        import open_clip

        vision_tower_config = open_clip.get_model_config(vision_tower)
    trunk = open_clip_trunk(vision_tower, vision_tower_config, vision_pretrained).requires_grad_(False)
    image_size = vision_tower_config["vision_cfg"]["image_size"]
    processor = build_processor(tokenizer, image_size if isinstance(image_size, int) else image_size[0])
    if len(tokenizer) != lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    config = DxLlavaConfig(text_config=lm.config.to_dict(), vision_tower=vision_tower, vision_pretrained=vision_pretrained,
                           vision_tower_config=vision_tower_config, mm_hidden_size=trunk.num_features,
                           image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    with torch.device("meta"):  # the pretrained parts replace the meta ones: no 7B random init
        model = DxLlavaForConditionalGeneration(config)
    model.vision_tower, model.language_model = trunk, lm
    model.projector = build_projector(config)
    model.head = BinaryHead(config.text_config.hidden_size, config.head_hidden_size)
    for linear in (model.head.fc1, model.head.fc2):
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
    return save_dx_llava(model.to(dtype), processor, out)


def save_dx_llava(model: DxLlavaForConditionalGeneration, processor: LlavaProcessor, out: str | Path) -> Path:
    """An ordinary Hugging Face folder (safetensors, tower included) whose generation ends at `</s>`."""
    tokenizer = processor.tokenizer
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def head_view(images: torch.Tensor) -> torch.Tensor:
    """The head's own augmented view of [B, 3, S, S] pixels in [0, 1], each image drawn apart (the
    official binary pipeline: RandomResizedCrop 224 at scale 0.7-1, flip, ColorJitter 0.3/0.3/0.3/0.15,
    rotation 20 degrees, grayscale p 0.1, Gaussian blur 3 at sigma 0.1-2), then resized back to S as the
    official preprocessing does. The crop keeps the official 224/320 ratio at other sizes (the tiny tower)."""
    from torchvision.transforms import v2

    size = images.shape[-1]
    augment = v2.Compose([
        v2.RandomResizedCrop(round(size * 224 / 320), scale=(0.7, 1.0), antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.15),
        v2.RandomRotation(degrees=20),
        v2.RandomGrayscale(p=0.1),
        v2.GaussianBlur(kernel_size=3, sigma=(0.1, 2.0)),
        v2.Resize((size, size), antialias=True),
    ])
    return torch.stack([augment(image) for image in images]).clamp(0.0, 1.0)


class DxLlava(ModelFamily):
    """The DX-LLaVA family: LLaVA v1 prompts with one image (`<image>` expanded to the tower's tokens), the
    `</s>` turn end, the frozen tower, and the binary head trained beside the language model.

    A prompt's `pixel_values` are the preprocessed image in [0, 1] ([3, S, S], not yet normalised), so that
    `collate` can draw the head's augmented view from it; both views are normalised here. A video row is
    asked about its middle frame (DX-LLaVA is an image detector)."""

    model_types = ("dx_llava",)
    auto_class = AutoModelForImageTextToText
    end_token = END_TOKEN
    vision_tokens = (IMAGE_TOKEN,)
    has_head = True
    frozen_modules = ("vision_tower",)
    default_trainable: ClassVar[tuple[str, ...]] = ("projector", "head", "language_model")
    vllm_prompt_embeds = True

    def __init__(self, processor):
        super().__init__(processor)
        image = processor.image_processor
        self.mean = torch.tensor(image.image_mean).view(3, 1, 1)
        self.std = torch.tensor(image.image_std).view(3, 1, 1)

    @classmethod
    def lora_target(cls, modules: list[str]) -> str:
        """Adapters on the language model alone (the projector and head train whole: `modules_to_save`)."""
        return rf".*language_model.*\.({'|'.join(modules)})$"

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def vllm_serving(self, source: str, workdir: Path, dtype: torch.dtype, device: str) -> DxLlavaServing:
        return DxLlavaServing(self, source, workdir, dtype, device)

    # -- prompts ----------------------------------------------------------------------------------

    def encode_prompt(self, text: str, frames: np.ndarray, is_video: bool, budget, duration_s: float | None) -> dict:
        out = self.processor(text=[text], images=[frames[len(frames) // 2]], return_tensors="np",
                             images_kwargs={"do_normalize": False})
        return {"input_ids": out["input_ids"][0].astype(np.int64), "pixel_values": out["pixel_values"][0].astype(np.float32),
                "grid_thw": np.zeros(3, np.int64), "second_per_grid_t": 1.0}

    def padding_batch(self) -> TrainBatch:
        """A prompt with a black image, so tower, projector and head run too (ZeRO-3 gathers per module)."""
        encoded = self.encode_prompt(self.chat_text("", "image"), np.zeros((1, 32, 32, 3), np.uint8), False, None, None)
        prompt = Prompt(key="", id="padding", path="", label="real", category="", input_ids=encoded["input_ids"],
                        pixel_values=encoded["pixel_values"], grid_thw=encoded["grid_thw"], is_video=False)
        response = [self.end_id]
        zeros = torch.zeros(response_positions([prompt], [response]).shape)
        return TrainBatch([prompt], [response], {"old_logprobs": zeros, "advantages": zeros, "loss_mask": zeros})

    # -- model inputs -----------------------------------------------------------------------------

    @staticmethod
    def pixels(prompts: list[Prompt]) -> torch.Tensor:
        return torch.from_numpy(np.stack([p.pixel_values for p in prompts])).float()

    def collate(self, prompts: list[Prompt], responses: list[list[int]]) -> dict[str, torch.Tensor]:
        """Text rows plus the generation view, the head's augmented view and the rows' binary labels (1 = fake)."""
        batch = super().collate(prompts, responses)
        images = self.pixels(prompts)
        batch["pixel_values"] = self.normalize(images)
        batch["head_pixel_values"] = self.normalize(head_view(images) if self.augment_head else images)
        batch["binary_labels"] = torch.tensor([float(p.label.lower() == "fake") for p in prompts])
        return batch

    def generation_inputs(self, prompt: Prompt) -> dict[str, torch.Tensor]:
        return {**super().generation_inputs(prompt), "pixel_values": self.normalize(self.pixels([prompt]))}

    def forward(self, model, batch: dict[str, torch.Tensor], *, head: bool = False, keep: int = 0):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
                    head_pixel_values=batch["head_pixel_values"] if head else None, use_cache=False, logits_to_keep=keep)
        return out.logits, out.head_logits

    def logits(self, model, batch: dict[str, torch.Tensor], keep: int = 0) -> torch.Tensor:
        return self.forward(model, batch, keep=keep)[0]

    @torch.no_grad()
    def head_probs(self, model, prompts: list[Prompt]) -> list[float]:
        """The head's probability of fake for each prompt's image (the generation view: no augmentation)."""
        device = next(model.parameters()).device
        logits = model.head_logits(self.normalize(self.pixels(prompts)).to(device))
        return torch.sigmoid(logits.float()).cpu().tolist()


def language_model_folder(source: str, out: Path) -> Path:
    """The LLaMA of the DX-LLaVA checkpoint `source` (a folder, or a hub name) as a plain `LlamaForCausalLM`
    folder in `out`: its config, the tokenizer, the generation config and the `language_model.*` tensors under
    LLaMA's own names, one file per file of the checkpoint (so one file's tensors are in memory at a time)."""
    from huggingface_hub import snapshot_download
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig

    folder = Path(source) if Path(source).is_dir() else Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
    out.mkdir(parents=True, exist_ok=True)
    text = DxLlavaConfig.from_pretrained(folder).text_config
    text.architectures = ["LlamaForCausalLM"]
    text.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    if (folder / "generation_config.json").exists():
        GenerationConfig.from_pretrained(folder).save_pretrained(out)
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            tensors = {k.removeprefix(LM_PREFIX): f.get_tensor(k) for k in f.keys() if k.startswith(LM_PREFIX)}
        if tensors:
            save_file(tensors, str(out / file.name), metadata={"format": "pt"})
    return out


class DxLlavaServing(VLLMServing):
    """DX-LLaVA served by vLLM from input embeddings (`enable_prompt_embeds`), as the official code serves it.

    vLLM loads the LLaMA alone (`language_model_folder`); this side holds the rest of the checkpoint (the
    model without the LLaMA's decoder layers: tower, projector, head, token embeddings) and turns each
    prompt into the LLaMA's input embeddings, its `<image>` slots filled with the projected image tokens, by
    the trainer's own code (`DxLlavaForConditionalGeneration.embed`). A sync's `language_model.*` tensors go
    to vLLM; the projector, the head and the token embeddings are loaded here (the embeddings go to both:
    vLLM embeds the sampled tokens itself). The tower never syncs."""

    lm_prefix = LM_PREFIX

    def __init__(self, family: DxLlava, source: str, workdir: Path, dtype: torch.dtype, device: str):
        import importlib.util

        missing = [m for m in ("open_clip", "timm") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"DX-LLaVA's vision tower needs open_clip_torch and timm ({', '.join(missing)} not installed "
                              "here): pip install open_clip_torch timm (the vLLM CPU environment: `make env-vllm`)")
        super().__init__(family, str(language_model_folder(source, workdir / "llama")))
        config = DxLlavaConfig.from_pretrained(source)
        config.text_config.num_hidden_layers = 0  # the decoder layers live in vLLM; their tensors are skipped
        from transformers.utils import logging

        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # not the load report's table of every skipped layer tensor
        try:
            self.model = DxLlavaForConditionalGeneration.from_pretrained(source, config=config, dtype=dtype).to(device).eval()
        finally:
            logging.set_verbosity(verbosity)

    def is_local(self, name: str) -> bool:
        return name.startswith(("projector.", "head.")) or name == EMBED_KEY

    def load_local(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(tensors, strict=False)  # names and shapes checked by the sync protocol

    @torch.no_grad()
    def inputs(self, prompts: list[Prompt]) -> list[dict]:
        """`{"prompt_embeds": [L, hidden]}` per prompt (on the CPU, in the model's dtype); the images of the
        call go through the tower in one batch."""
        device = self.model.device
        with_image = [p for p in prompts if p.pixel_values.size]
        tokens = iter(self.model.image_tokens(self.family.normalize(self.family.pixels(with_image)).to(device))
                      if with_image else ())
        out = []
        for p in prompts:
            ids = torch.tensor(p.input_ids, dtype=torch.long, device=device).unsqueeze(0)  # a copy: Ray hands read-only arrays
            image = next(tokens).unsqueeze(0) if p.pixel_values.size else None
            out.append({"prompt_embeds": self.model.embed(ids, image)[0].cpu()})
        return out

    def head_probs(self, prompts: list[Prompt]) -> list[float | None]:
        return self.family.head_probs(self.model, prompts)
