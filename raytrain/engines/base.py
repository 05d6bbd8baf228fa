"""Rollout engines: G sampled responses per prompt, with log-probabilities and the weight version.

`RolloutEngine` is the interface the rollout actor holds; `TransformersEngine`
(`raytrain.engines.transformers_engine`) implements it with `model.generate` (CPU and
small GPU runs), `VLLMEngine` (`raytrain.engines.vllm_engine`) with vLLM. Both receive weights in versioned buckets
(`raytrain.weight_sync.protocol.BucketReceiver`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Protocol

import torch

from raytrain.config.sections import ModelConfig, RolloutConfig, SamplingConfig
from raytrain.data.batch import Prompt, Refusal, Sample
from raytrain.weight_sync.group import GroupAddress
from raytrain.weight_sync.protocol import BucketMeta, Shape


class RolloutEngine(Protocol):
    version: int

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample] | Refusal]:
        """`sampling.group_size` samples per prompt (one when `greedy`), or a `Refusal` for a prompt the
        engine cannot serve."""

    def head_probs(self, prompts: list[Prompt]) -> list[float | None]:
        """The model's binary head's probability of fake per prompt (DX-LLaVA); None where there is no head."""

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


class ServingGate:
    """Generate calls and weight swaps take turns on an engine (`rollout.mode: async`, where a sync's calls run
    in a thread of their own): a swap waits at most for the call in progress, and a waiting swap holds back the
    calls after it, so back-to-back generate calls cannot starve it (a plain lock is not fair)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._no_swap_waiting = threading.Event()
        self._no_swap_waiting.set()

    @contextlib.contextmanager
    def call(self):
        self._no_swap_waiting.wait()
        with self._lock:
            yield

    @contextlib.contextmanager
    def swap(self):
        self._no_swap_waiting.clear()
        try:
            with self._lock:
                yield
        finally:
            self._no_swap_waiting.set()


def make_engine(model: ModelConfig, rollout: RolloutConfig, *, weights: str | None = None) -> RolloutEngine:
    """The engine `rollout.engine` names, on a GPU when the actor holding it was given one."""
    if rollout.engine == "vllm":
        from raytrain.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, rollout, weights=weights)
    from raytrain.engines.transformers_engine import TransformersEngine

    device = "cuda" if rollout.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    # Staged syncs where weights arrive while it generates (`rollout.mode: async`).
    return TransformersEngine(model, weights=weights, device=device, staged=rollout.mode == "async")


def sample_seed(sampling: SamplingConfig, prompt: Prompt, version: int) -> int | None:
    """The seed of one prompt's G samples under `rollout.sampling.seed` (None when unseeded): from the seed, the
    prompt's data key (unique per epoch and row) and the policy version, never from the order of calls."""
    if sampling.seed is None:
        return None
    digest = hashlib.sha256(f"{sampling.seed}:{prompt.key}:{version}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: torch and vLLM take a signed 64-bit seed
