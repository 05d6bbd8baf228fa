"""The transformers rollout engine: `model.generate` behind the `RolloutEngine` interface (CPU and small GPU runs)."""

from __future__ import annotations

import torch

from raytrain.config.sections import ModelConfig, SamplingConfig
from raytrain.data.batch import Prompt, Sample
from raytrain.models.loading import apply_sync_state, load_family, load_policy, sync_state
from raytrain.models.logprobs import masked_logprobs
from raytrain.weight_sync.group import GroupAddress, WeightGroup
from raytrain.weight_sync.protocol import BucketMeta, BucketReceiver, Shape, tensor_spec


class TransformersEngine(BucketReceiver):
    """`model.generate`, one prompt (G return sequences) at a time. Serves the vision-language
    detectors, and text-only causal LMs too (the benchmark's side-by-side with vLLM on CPU)."""

    def __init__(self, cfg: ModelConfig, *, weights: str | None = None, device: str = "cpu"):
        self.device = torch.device(device)
        self.family = load_family(cfg)
        self.tokenizer = self.family.tokenizer
        self.model = load_policy(cfg, weights=weights).to(self.device).eval()
        self.eos_id, self.pad_id, self.suppress_ids = self.family.end_id, self.family.pad_id, self.family.suppress_ids
        self.version = 0
        self._group: WeightGroup | None = None
        self._received: dict[str, torch.Tensor] | None = None
        # What a sync carries: the adapter alone under LoRA, every weight otherwise.
        self._spec = tensor_spec(sync_state(self.model, cpu_copy=False))

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample]]:
        self.check_serving()
        n = 1 if greedy else sampling.group_size
        return [self._generate_one(p, sampling, n, greedy) for p in prompts]

    def _generate_one(self, prompt: Prompt, sampling: SamplingConfig, n: int, greedy: bool) -> list[Sample]:
        inputs = {k: v.to(self.device) for k, v in self.family.generation_inputs(prompt).items()}
        prompt_length = inputs["input_ids"].shape[1]
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
        new_tokens = out.sequences[:, prompt_length:].cpu()
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

    def head_probs(self, prompts: list[Prompt]) -> list[float | None]:
        """The binary head's probability of fake per prompt (None for a family without a head)."""
        if not self.family.has_head:
            return [None] * len(prompts)
        return self.family.head_probs(self.model, prompts)

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
