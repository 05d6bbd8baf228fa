"""The model-family interface: everything the trainer, the engines and the data pipeline need to know
about one kind of detector, behind one object.

A family is chosen from a checkpoint's `model_type` (`raytrain.models.loading.FAMILIES`). Its class
says how the weights load (`auto_class`) and where LoRA adapters go; an instance wraps the
checkpoint's processor and turns rows into prompts, prompts and responses into model inputs, and
model inputs into logits. Qwen2.5-VL (BusterX++) is `raytrain.models.qwen2_5_vl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from raytrain.data.batch import Prompt, TrainBatch, response_positions


def processor_size(budget) -> dict[str, int]:
    """A `MediaConfig`'s per-frame pixel caps in the transformers processors' own terms."""
    return {"longest_edge": budget.max_pixels, "shortest_edge": budget.min_pixels}


def head_bce(head_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A binary head's BCE-with-logits (labels 1 = fake) summed over the rows: the trainer divides by the
    step's row count, so the step's loss holds the mean over its rows."""
    return torch.nn.functional.binary_cross_entropy_with_logits(head_logits.float(), labels.float(), reduction="sum")


class VLLMServing:
    """How a vLLM rollout engine serves a family's checkpoint: the folder vLLM loads (`model_path`), what each
    prompt becomes for vLLM (`inputs`), and which synced tensors vLLM loads (those named `lm_prefix...`,
    under their names without it) and which this side keeps (`is_local`). This one serves the checkpoint as
    it is: vLLM loads every tensor, the prompts are the family's `vllm_input`."""

    lm_prefix: ClassVar[str] = ""

    def __init__(self, family: ModelFamily, source: str):
        self.family, self.model_path = family, source

    def inputs(self, prompts: list[Prompt]) -> list[dict]:
        return [self.family.vllm_input(p) for p in prompts]

    def is_local(self, name: str) -> bool:
        return False

    def split(self, bucket: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """A synced bucket as (what vLLM loads, under vLLM's names; what `load_local` takes)."""
        n = len(self.lm_prefix)
        return ({k[n:]: v for k, v in bucket.items() if k.startswith(self.lm_prefix)},
                {k: v for k, v in bucket.items() if self.is_local(k)})

    def load_local(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no weights")

    def head_probs(self, prompts: list[Prompt]) -> list[float | None]:
        """vLLM holds no binary head: None per prompt unless this side keeps one."""
        return [None] * len(prompts)


class ModelFamily:
    model_types: ClassVar[tuple[str, ...]]  # the `model_type`s of the checkpoints this family serves
    auto_class: ClassVar[type]  # the transformers Auto class that loads them
    end_token: ClassVar[str]  # ends an assistant turn: generation stops at it, SFT targets end with it
    vision_tokens: ClassVar[tuple[str, ...]] = ()  # special tokens of the prompt's media, never sampled
    has_head: ClassVar[bool] = False  # a binary real/fake head beside the LM (`forward(head=True)`, `head_probs`)
    augment_head = True  # the head trains on its own augmented view (`model.head_augment`, set by `load_family`)
    # Top-level submodules that never train and never travel to rollout engines (which hold their own copy).
    frozen_modules: ClassVar[tuple[str, ...]] = ()
    # Top-level submodules that train when `model.trainable` is null; None: every weight.
    default_trainable: ClassVar[tuple[str, ...] | None] = None
    # vLLM is fed the prompts' input embeddings (`enable_prompt_embeds`), computed by `vllm_serving`'s side.
    vllm_prompt_embeds: ClassVar[bool] = False

    def __init__(self, processor):
        self.processor = processor  # a bare tokenizer for a text-only model
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.end_id = self.tokenizer.convert_tokens_to_ids(self.end_token)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        self.suppress_ids = self.special_ids(self.tokenizer)

    @classmethod
    def special_ids(cls, tokenizer) -> list[int]:
        """Ids of `vision_tokens` in `tokenizer`: a response must never contain them (a sampled
        `<|video_pad|>` would make the trainer's forward expect pixels that do not exist), so
        generation and training both mask them out."""
        ids = set()
        for name in cls.vision_tokens:
            token_id = tokenizer.convert_tokens_to_ids(name)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
        return sorted(ids)

    @classmethod
    def lora_target(cls, modules: list[str]) -> str:
        """The regex of module names that receive LoRA adapters: `modules` wherever they are."""
        return rf".*\.({'|'.join(modules)})$"

    # -- prompts ----------------------------------------------------------------------------------

    def chat_text(self, text: str, media: str | None) -> str:
        """The chat-template text of a user turn asking `text` about one `media` (video, image, or None
        for text alone), with the generation prompt after it."""
        content = [{"type": "text", "text": text}] if media is None else [{"type": media}, {"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)

    def encode_prompt(self, text: str, frames: np.ndarray, is_video: bool, budget, duration_s: float | None) -> dict:
        """A chat prompt with its media as the columns of a `Prompt` (`input_ids`, `pixel_values`,
        `grid_thw`, `second_per_grid_t`). `budget`: the per-frame pixel caps (`MediaConfig`);
        `duration_s`: the clip's length when known."""
        raise NotImplementedError(f"{type(self).__name__} takes no media")

    def text_prompt(self, text: str) -> Prompt:
        """A prompt without media (text-only models, e.g. vLLM on CPU): the chat template's tokens, no pixels."""
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return Prompt(key=text, id=text, path="", label="", category="text", input_ids=np.asarray(ids, dtype=np.int64),
                      pixel_values=np.zeros((0, 0), np.float32), grid_thw=np.zeros(3, np.int64), is_video=False)

    def padding_batch(self) -> TrainBatch:
        """One row standing in for a micro-batch a rank does not have (the ranks of a step must run as many
        passes, since ZeRO's collectives are per pass): the smallest prompt that runs every module a
        real one runs, and an empty loss mask."""
        raise NotImplementedError

    # -- model inputs -----------------------------------------------------------------------------

    def collate(self, prompts: list[Prompt], responses: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-padded prompt+response rows as model inputs, with `response_mask` marking response tokens
        (the token rows alone here; families with media add their pixels)."""
        seqs = [np.concatenate([p.input_ids, np.asarray(r, dtype=np.int64)]) for p, r in zip(prompts, responses)]
        response_mask = response_positions(prompts, responses)
        input_ids = torch.full(response_mask.shape, self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, seq in enumerate(seqs):
            input_ids[i, : len(seq)] = torch.from_numpy(seq)
            attention_mask[i, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}

    def generation_inputs(self, prompt: Prompt) -> dict[str, torch.Tensor]:
        """One prompt as `generate` inputs (a batch of one)."""
        input_ids = torch.tensor(prompt.input_ids, dtype=torch.long).unsqueeze(0)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def logits(self, model, batch: dict[str, torch.Tensor], keep: int = 0) -> torch.Tensor:
        """[B, L, V] logits of a `collate` batch; with `keep`, of its last `keep` positions alone ([B, keep, V]:
        the LM head projects no others)."""
        inputs = {k: v for k, v in batch.items() if k != "response_mask"}
        return model(**inputs, use_cache=False, logits_to_keep=keep).logits

    def forward(self, model, batch: dict[str, torch.Tensor], *, head: bool = False,
                keep: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits of a `collate` batch (`keep`: see `logits`) and, with `head` on a family with a binary head,
        the head's [B] logits of fake on the batch's head view, from one forward pass (None otherwise)."""
        return self.logits(model, batch, keep), None

    def head_probs(self, model, prompts: list[Prompt]) -> list[float]:
        """The binary head's probability of fake for each prompt (`has_head` families only)."""
        raise NotImplementedError(f"{type(self).__name__} has no binary head")

    def processor_inputs(self, texts: list[str], images: list, videos: list, budget):
        """A padded batch of chat texts with their media through the processor, as `generate` inputs (the
        thinking judge's batches); `budget`: the per-frame pixel caps (`MediaConfig`)."""
        size = processor_size(budget)
        return self.processor(text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt",
                              images_kwargs={"size": size}, videos_kwargs={"do_sample_frames": False, "size": size})

    def vllm_input(self, prompt: Prompt) -> dict:
        """The prompt as vLLM's `LLM.generate` takes it (a `TokensPrompt`, with its media where the family
        has them, built from the prompt alone: the engine decodes nothing)."""
        if prompt.pixel_values.size:
            raise NotImplementedError(f"{type(self).__name__} takes no media")
        return {"prompt_token_ids": [int(t) for t in prompt.input_ids]}

    def vllm_serving(self, source: str, workdir: Path, dtype: torch.dtype, device: str) -> VLLMServing:
        """How a vLLM engine serves the checkpoint at `source` (full weights; `workdir`: a folder the engine
        owns, for what the serving writes; `dtype` and `device`: those of what this side runs)."""
        return VLLMServing(self, source)
