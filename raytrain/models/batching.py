"""Turning processed prompts and sampled responses into model inputs and log-probabilities.

Shared by the rollout engine (generation) and the trainer (the policy-gradient
forward pass), so both see exactly the same tokens, pixels and positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Prompt:
    """One processed prompt: chat-template tokens with vision placeholders expanded, plus its pixels."""

    key: str  # unique per (epoch, row): the unit of data-position bookkeeping
    id: str
    path: str
    label: str
    category: str
    input_ids: np.ndarray  # int64 [L]
    pixel_values: np.ndarray  # float32 [patches, C*T*P*P]
    grid_thw: np.ndarray  # int64 [3]
    is_video: bool
    second_per_grid_t: float = 1.0
    mode: str = "think"  # BusterX++ stage-3 mode flag (think / no_think), scored by the hybrid and thinking rewards
    explanation: str = ""  # reasoning an SFT target teaches (manifest `explanation`); empty: the config's template


def text_prompt(tokenizer, text: str) -> Prompt:
    """A prompt without media (text-only models, e.g. vLLM on CPU): the chat template's tokens, no pixels."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return Prompt(
        key=text, id=text, path="", label="", category="text", input_ids=np.asarray(ids, dtype=np.int64),
        pixel_values=np.zeros((0, 0), np.float32), grid_thw=np.zeros(3, np.int64), is_video=False,
    )


def padding_batch(processor) -> "TrainBatch":
    """One row standing in for a micro-batch a rank does not have (the ranks of a step must run as many
    passes): a prompt with the smallest black image, so its forward runs every module a real one runs,
    the vision tower included (ZeRO-3 gathers parameters module by module), and an empty loss mask."""
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False,
                                         add_generation_prompt=True)
    out = processor(text=[text], images=[np.zeros((28, 28, 3), np.uint8)], return_tensors="np")
    prompt = Prompt(key="", id="padding", path="", label="", category="", input_ids=out["input_ids"][0].astype(np.int64),
                    pixel_values=out["pixel_values"].astype(np.float32), grid_thw=out["image_grid_thw"][0].astype(np.int64),
                    is_video=False)
    response = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    zeros = torch.zeros(response_positions([prompt], [response]).shape)
    return TrainBatch([prompt], [response], {"old_logprobs": zeros, "advantages": zeros, "loss_mask": zeros})


@dataclass
class Sample:
    """One sampled response and what produced it."""

    token_ids: list[int]
    logprobs: list[float]  # under the sampling policy (temperature-scaled raw logits)
    text: str
    truncated: bool  # hit max_new_tokens without an end-of-sequence token
    version: int  # policy weight version that generated it
    extra: dict = field(default_factory=dict)


def collate_ids(processor) -> dict[str, int]:
    """The token ids `collate` needs from a model's processor."""
    return {"pad_id": processor.tokenizer.pad_token_id, "image_token_id": processor.image_token_id,
            "video_token_id": processor.video_token_id}


def vision_special_ids(processor) -> list[int]:
    """Tokens a response must never contain: a sampled `<|video_pad|>` would make the trainer's
    forward expect pixels that do not exist. Generation and training both mask them out.
    Takes a processor, or a bare tokenizer (text-only models served by vLLM)."""
    tok = getattr(processor, "tokenizer", processor)
    ids = {i for i in (getattr(processor, "image_token_id", None), getattr(processor, "video_token_id", None)) if i is not None}
    for name in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"):
        token_id = tok.convert_tokens_to_ids(name)
        if token_id is not None and token_id != tok.unk_token_id:
            ids.add(token_id)
    return sorted(ids)


def masked_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float, suppress_ids: list[int]) -> torch.Tensor:
    """log-probabilities of `tokens` under softmax(logits / temperature) with `suppress_ids` removed:
    the distribution the rollout samples from, so trainer and engine compute the same numbers."""
    logits = logits.float() / temperature
    if not suppress_ids:
        return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logits[..., suppress_ids] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    # Suppressed tokens occur only inside prompts (vision placeholders), never in a response:
    # 0 there keeps -inf out of masked sums (0 * -inf is nan).
    return logp.masked_fill(torch.isin(tokens, torch.tensor(suppress_ids, device=tokens.device)), 0.0)


def token_type_ids(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """Qwen2.5-VL's `mm_token_type_ids` (0 text, 1 image, 2 video): M-RoPE positions depend on it."""
    return (input_ids == image_token_id).long() + 2 * (input_ids == video_token_id).long()


def vision_inputs(prompts: list[Prompt]) -> dict[str, torch.Tensor]:
    """Concatenate the pixels of a batch in sequence order, split by modality as Qwen2.5-VL expects
    (none for text prompts)."""
    out: dict[str, torch.Tensor] = {}
    for is_video, pv_key, grid_key in ((False, "pixel_values", "image_grid_thw"), (True, "pixel_values_videos", "video_grid_thw")):
        chosen = [p for p in prompts if p.is_video == is_video and p.pixel_values.size]
        if chosen:
            out[pv_key] = torch.from_numpy(np.concatenate([p.pixel_values for p in chosen])).float()
            out[grid_key] = torch.from_numpy(np.stack([p.grid_thw for p in chosen])).long()
    videos = [p for p in prompts if p.is_video]
    if videos:
        out["second_per_grid_ts"] = torch.tensor([p.second_per_grid_t for p in videos])
    return out


def collate(prompts: list[Prompt], responses: list[list[int]], *, pad_id: int, image_token_id: int, video_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response batch with a mask over response tokens.

    `prompts[i]` is the prompt of `responses[i]` (a group repeats its prompt G times).
    `response_mask[i, t]` marks positions whose token is a response token.
    """
    seqs = [np.concatenate([p.input_ids, np.asarray(r, dtype=np.int64)]) for p, r in zip(prompts, responses)]
    response_mask = response_positions(prompts, responses)
    input_ids = torch.full(response_mask.shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.from_numpy(seq)
        attention_mask[i, : len(seq)] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": token_type_ids(input_ids, image_token_id, video_token_id),
        "response_mask": response_mask,
    }
    batch.update(vision_inputs(prompts))
    return batch


def response_positions(prompts: list[Prompt], responses: list[list[int]]) -> torch.Tensor:
    """`collate`'s response mask alone [B, L] (no pixels gathered): 1 where a response token sits."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    width = max(len(p.input_ids) + len(r) for p, r in zip(prompts, responses))
    mask = torch.zeros(len(prompts), width)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        mask[i, len(p.input_ids): len(p.input_ids) + len(r)] = 1
    return mask


@dataclass
class TrainBatch:
    """One rank's training sequences: prompt + response rows and per-token tensors [B, L] over the
    rows as `collate` lays them out (`loss_mask`, and for RL `old_logprobs` and `advantages`).

    `micro_batches` collates at most `size` rows at a time, so a step's forward and backward
    need only a micro-batch's activations and pixels; per-token tensors are cut to each
    micro-batch's rows and padded width (rows are right-padded, so positions do not move).
    """

    prompts: list[Prompt]
    responses: list[list[int]]
    per_token: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.prompts)

    def micro_batches(self, size: int, **tokenizer_ids) -> list[dict[str, torch.Tensor]]:
        out = []
        for i in range(0, len(self), size):
            batch = collate(self.prompts[i:i + size], self.responses[i:i + size], **tokenizer_ids)
            width = batch["input_ids"].shape[1]
            batch.update({k: v[i:i + size, :width] for k, v in self.per_token.items()})
            out.append(batch)
        return out


_PIXELS = (("pixel_values", "image_grid_thw", "image"), ("pixel_values_videos", "video_grid_thw", "video"))


def encode_media(model, batch: dict[str, torch.Tensor]) -> dict:
    """The batch's images and videos through the vision tower in one call, as the `mm_encoder_outputs`
    Qwen2.5-VL's forward accepts in place of pixels (the tower encodes both alike, each item apart).

    Its own forward calls the tower once per modality present, so ranks whose batches mix images and
    videos differently would run different modules: under ZeRO-3, whose parameter gathers are
    collectives issued module by module, that deadlocks. One call keeps every rank in step."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    present = [(pv, grid, modality) for pv, grid, modality in _PIXELS if pv in batch]
    features = model.get_image_features(torch.cat([batch[pv] for pv, _, _ in present]),
                                        torch.cat([batch[grid] for _, grid, _ in present]), return_dict=True).pooler_output
    encoded, start = {}, 0
    for _, grid, modality in present:
        count = len(batch[grid])
        encoded[modality] = BaseModelOutputWithPooling(pooler_output=features[start:start + count])
        start += count
    return encoded


def token_logprobs(model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0, suppress_ids: list[int] = ()) -> torch.Tensor:
    """log pi(token_t | tokens_<t) for every position t >= 1 (position 0 gets 0), shape [B, L].
    Media go through the vision tower in one call (`encode_media`)."""
    inputs = {k: v for k, v in batch.items() if k not in ("response_mask", *(pv for pv, _, _ in _PIXELS))}
    if any(pv in batch for pv, _, _ in _PIXELS):
        inputs["mm_encoder_outputs"] = encode_media(model, batch)
    logits = model(**inputs, use_cache=False).logits[:, :-1]
    logp = masked_logprobs(logits, batch["input_ids"][:, 1:], temperature=temperature, suppress_ids=list(suppress_ids))
    return torch.nn.functional.pad(logp, (1, 0))
