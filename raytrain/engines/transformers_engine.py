"""The transformers rollout engine: `model.generate` behind the `RolloutEngine` interface (CPU and small GPU runs),
and the same generation on a training worker's live module (`LiveModuleEngine`, colocated rollouts)."""

from __future__ import annotations

import contextlib

import torch

from raytrain.config.sections import ModelConfig, SamplingConfig
from raytrain.data.batch import Prompt, Sample
from raytrain.engines.base import ServingGate, sample_seed
from raytrain.models.family import ModelFamily
from raytrain.models.loading import apply_sync_state, load_family, load_policy, sync_state
from raytrain.models.logprobs import masked_logprobs
from raytrain.weight_sync.group import GroupAddress, WeightGroup
from raytrain.weight_sync.protocol import BucketMeta, BucketReceiver, Shape, tensor_spec


class TransformersEngine(BucketReceiver):
    """`model.generate`, one prompt (G return sequences) at a time. Serves the vision-language
    detectors, and text-only causal LMs too (the benchmark's side-by-side with vLLM on CPU).

    With `staged` (`rollout.mode: async`), a sync's buckets are kept aside and `finish_update` swaps them in
    between generate calls, so a rollout actor can receive weights while it generates and every sample is
    stamped with the version that generated all of it; a sync cut short leaves the served weights whole.
    Without it (`rollout.mode: sync`, where nothing generates during a sync), each bucket is copied straight
    into the served weights: one copy into memory already allocated, not a fresh copy kept aside and
    copied again (measured on CPU, 133 MiB in one bucket: 0.06-0.07 s a sync against 0.09 s staged). A sync cut short then
    leaves weights of no single version, and the engine refuses to generate until a complete sync
    arrives (the trainer sends its checkpoint's weights again when it resumes)."""

    def __init__(self, cfg: ModelConfig, *, weights: str | None = None, device: str = "cpu", staged: bool = True):
        self.device = torch.device(device)
        self.staged = staged
        self.family = load_family(cfg)
        self.tokenizer = self.family.tokenizer
        self.model = load_policy(cfg, weights=weights).to(self.device).eval()
        self.eos_id, self.pad_id, self.suppress_ids = self.family.end_id, self.family.pad_id, self.family.suppress_ids
        self.version = 0
        self._group: WeightGroup | None = None
        self._received: dict[str, torch.Tensor] | None = None
        self._staged: dict[str, torch.Tensor] = {}
        self._gate = ServingGate()  # a sync's swap waits for the generate call in progress
        # What a sync carries: the adapter alone under LoRA, every weight otherwise.
        self._spec = tensor_spec(sync_state(self.model, cpu_copy=False))

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample]]:
        with self._gate.call():
            self.check_serving()
            return sample_groups(self.family, self.model, prompts, sampling, greedy=greedy, version=self.version)

    def head_probs(self, prompts: list[Prompt]) -> list[float | None]:
        """The binary head's probability of fake per prompt (None for a family without a head)."""
        if not self.family.has_head:
            return [None] * len(prompts)
        return self.family.head_probs(self.model, prompts)

    def sync_spec(self) -> dict[str, Shape]:
        return self._spec

    def _apply_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        # Copies either way: an object-store bucket is a read-only view of shared memory the sender frees.
        if not self.staged:
            with self._gate.swap():
                apply_sync_state(self.model, bucket)
            return
        self._staged.update({k: v.to(self.device, copy=True) for k, v in bucket.items()})

    def _commit(self, version: int) -> None:
        if self.staged:
            apply_sync_state(self.model, self._staged)
            self._staged = {}

    def _abort(self, applied: bool) -> bool:
        self._staged = {}
        return self.staged or not applied  # nothing staged reached the served weights

    def _mixed_weights(self) -> str | None:
        return super()._mixed_weights() if not self.staged else None  # staged: always one version's weights

    def finish_update(self) -> int:
        with self._gate.swap():  # weights and version change together, between generate calls
            return super().finish_update()

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


@torch.no_grad()
def sample_groups(family: ModelFamily, model, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool,
                  version: int) -> list[list[Sample]]:
    """`model.generate` on the model's device, one prompt (G return sequences, one when `greedy`) at a time;
    each sample stamped with the weight `version` that produced it. The transformers engine's copy of the
    policy generates with it, and so does a training worker's live module (`LiveModuleEngine`)."""
    n = 1 if greedy else sampling.group_size
    return [_sample_one(family, model, p, sampling, n, greedy, version) for p in prompts]


def _sample_one(family: ModelFamily, model, prompt: Prompt, sampling: SamplingConfig, n: int, greedy: bool,
                version: int) -> list[Sample]:
    inputs = {k: v.to(model.device) for k, v in family.generation_inputs(prompt).items()}
    prompt_length = inputs["input_ids"].shape[1]
    sample_args = {"do_sample": False} if greedy else {
        "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
    }
    seed = None if greedy else sample_seed(sampling, prompt, version)
    with _seeded(seed, model.device):
        out = model.generate(
            **inputs,
            **sample_args,
            num_return_sequences=n,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=family.end_id,
            pad_token_id=family.pad_id,
            suppress_tokens=family.suppress_ids,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new_tokens = out.sequences[:, prompt_length:].cpu()
    # From raw logits: the policy's own (temperature-scaled) distribution, which the trainer recomputes.
    logprobs = masked_logprobs(
        torch.stack(out.logits, dim=1).cpu(), new_tokens,
        temperature=1.0 if greedy else sampling.temperature, suppress_ids=family.suppress_ids,
    )
    samples = []
    for row, row_logp in zip(new_tokens.tolist(), logprobs.tolist()):
        length = row.index(family.end_id) + 1 if family.end_id in row else len(row)
        ids = row[:length]
        samples.append(Sample(
            token_ids=ids,
            logprobs=row_logp[:length],
            text=family.tokenizer.decode(ids, skip_special_tokens=True),
            truncated=family.end_id not in ids,
            version=version,
        ))
    return samples


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """The global RNG, which `generate` samples from, seeded with `seed` inside the block and put back after;
    untouched when `seed` is None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class LiveModuleEngine:
    """The colocated rollout engine (`rollout.colocate`): a training worker's own live module generates its
    prompts' groups, as TRL's and verl's hybrid engines do. No second copy and no weight sync: it serves the
    trainer's current weights (under LoRA the base with the live adapter applied, the function the trainer's
    forward computes), stamped with `version`, which the worker keeps at its policy version. The module
    generates in eval mode (no dropout, no gradient checkpointing) and goes back to its mode after."""

    def __init__(self, family: ModelFamily, module):
        self.family, self.module, self.version = family, module, 0

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample]]:
        training = self.module.training
        self.module.eval()
        try:
            return sample_groups(self.family, self.module, prompts, sampling, greedy=greedy, version=self.version)
        finally:
            self.module.train(training)
