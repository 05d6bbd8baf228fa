"""Rollout engines: G sampled responses per prompt, with log-probabilities and the weight version.

`RolloutEngine` is the interface the rollout actor holds; `TransformersEngine`
implements it with `model.generate` (CPU and small GPU runs), `VLLMEngine`
(raytrain.engines.vllm_engine) with vLLM. Both receive weights in versioned buckets
(`raytrain.weight_sync.BucketReceiver`).
"""

from __future__ import annotations

from typing import Protocol

import torch
from peft import PeftModel, get_peft_model_state_dict

from raytrain.config import DataConfig, ModelConfig, RolloutConfig, SamplingConfig
from raytrain.models.loading import apply_sync_state, load_policy, load_processor
from raytrain.models.batching import Prompt, Sample, masked_logprobs, token_type_ids, vision_inputs, vision_special_ids
from raytrain.weight_sync.group import GroupAddress, WeightGroup
from raytrain.weight_sync.protocol import BucketMeta, BucketReceiver, Shape, tensor_spec


class RolloutEngine(Protocol):
    version: int

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample]]:
        """`sampling.group_size` samples per prompt (one when `greedy`)."""

    def begin_update(self, version: int, plan: dict[str, Shape], group: GroupAddress | None = None) -> None:
        """Announce a sync: the names and shapes of every tensor that will follow (checked now), and
        the weight group its buckets will come over (None: they come as tensors)."""

    def load_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        """Apply one bucket of the announced tensors."""

    def join_weight_group(self, address: GroupAddress, first_rank: int) -> int:
        """Join the sender's weight group (ranks from `first_rank` on); returns the ranks taken."""

    def receive_bucket(self, meta: BucketMeta) -> None:
        """Receive one bucket broadcast over the weight group and apply it like `load_bucket`."""

    def finish_update(self) -> int:
        """Serve the new weights from now on; returns the version now served (fails if a tensor is missing)."""


def make_engine(model: ModelConfig, rollout: RolloutConfig, *, weights: str | None = None,
                data: DataConfig | None = None) -> RolloutEngine:
    """The engine `rollout.engine` names, on a GPU when the actor holding it was given one
    (`data`: how the vLLM engine decodes a multimodal prompt's media)."""
    if rollout.engine == "vllm":
        from raytrain.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, rollout, weights=weights, data=data)
    device = "cuda" if rollout.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    return TransformersEngine(model, weights=weights, device=device)


class TransformersEngine(BucketReceiver):
    """`model.generate`, one prompt (G return sequences) at a time. Serves the vision-language
    detectors, and text-only causal LMs too (the benchmark's side-by-side with vLLM on CPU)."""

    def __init__(self, cfg: ModelConfig, *, weights: str | None = None, device: str = "cpu"):
        self.device = torch.device(device)
        self.processor = processor = load_processor(cfg)  # a bare tokenizer for a text-only model
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model = load_policy(cfg, weights=weights).to(self.device).eval()
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.image_token_id = getattr(processor, "image_token_id", None)
        self.video_token_id = getattr(processor, "video_token_id", None)
        self.suppress_ids = vision_special_ids(processor)
        self.version = 0
        self._group: WeightGroup | None = None
        self._received: dict[str, torch.Tensor] | None = None
        # What a sync carries: the adapter alone under LoRA, every weight otherwise.
        self._spec = tensor_spec(get_peft_model_state_dict(self.model) if isinstance(self.model, PeftModel) else self.model.state_dict())

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample]]:
        self.check_serving()
        n = 1 if greedy else sampling.group_size
        return [self._generate_one(p, sampling, n, greedy) for p in prompts]

    def _generate_one(self, prompt: Prompt, sampling: SamplingConfig, n: int, greedy: bool) -> list[Sample]:
        input_ids = torch.tensor(prompt.input_ids, dtype=torch.long).unsqueeze(0)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **vision_inputs([prompt])}
        if self.image_token_id is not None:  # a vision-language model: its M-RoPE positions need the token types
            inputs["mm_token_type_ids"] = token_type_ids(input_ids, self.image_token_id, self.video_token_id)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        sample_args = {"do_sample": False} if greedy else {
            "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
        }
        out = self.model.generate(
            **inputs,
            **sample_args,
            num_return_sequences=n,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            suppress_tokens=self.suppress_ids,
            output_logits=True,
            return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, input_ids.shape[1]:].cpu()
        # From raw logits: the policy's own (temperature-scaled) distribution, which the trainer recomputes.
        logprobs = masked_logprobs(
            torch.stack(out.logits, dim=1).cpu(), new_tokens,
            temperature=1.0 if greedy else sampling.temperature, suppress_ids=self.suppress_ids,
        )
        samples = []
        for row, row_logp in zip(new_tokens.tolist(), logprobs.tolist()):
            length = row.index(self.eos_id) + 1 if self.eos_id in row else len(row)
            ids = row[:length]
            samples.append(Sample(
                token_ids=ids,
                logprobs=row_logp[:length],
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                truncated=self.eos_id not in ids,
                version=self.version,
            ))
        return samples

    def sync_spec(self) -> dict[str, Shape]:
        return self._spec

    def _apply_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        apply_sync_state(self.model, {k: v.to(self.device) for k, v in bucket.items()})

    def join_weight_group(self, address: GroupAddress, first_rank: int) -> int:
        self._group = self.weight_group = None  # a restarted sender's new group replaces the old one
        self._group = WeightGroup.join(address, first_rank)
        self.weight_group = address
        return 1

    def _receive(self, meta: BucketMeta) -> None:
        if self._group is None:
            raise RuntimeError("weight bucket broadcast before this engine joined a weight group")
        self._received = self._group.receive(meta, self.device)

    def _apply_received(self) -> None:
        bucket, self._received = self._received, None
        self._apply_bucket(bucket)
