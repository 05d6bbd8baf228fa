"""Engine checks, and a plain-dict engine, shared by the main suite and the vLLM suite (imports in both environments)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raytrain.weight_sync.group import GroupAddress, WeightGroup
from raytrain.weight_sync.protocol import BucketMeta, BucketReceiver, bucket_meta, buckets, tensor_spec
from raytrain.weight_sync.sender import LocalEngines


def greedy_tokens(engine, prompts, sampling) -> list[list[int]]:
    """Each prompt's greedy response as token ids: what an engine serves, to compare engines and weights."""
    return [g[0].token_ids for g in engine.generate(prompts, sampling, greedy=True)]


class DictEngine(BucketReceiver):
    """A receiver over a plain dict shaped like `state` (zeros at first): records what it applied and
    committed, and receives by gloo broadcast once it joined a weight group."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.weights = {k: torch.zeros_like(v) for k, v in state.items()}
        self.applied: list[list[str]] = []
        self.committed: list[int] = []
        self._group: WeightGroup | None = None
        self._received: dict[str, torch.Tensor] | None = None

    def sync_spec(self):
        return tensor_spec(self.weights)

    def _apply_bucket(self, bucket):
        self.applied.append(sorted(bucket))
        self.weights.update(bucket)

    def _commit(self, version):
        self.committed.append(version)

    def join_weight_group(self, address: GroupAddress, first_rank: int) -> int:
        self._group = WeightGroup.join(address, first_rank)
        self.weight_group = address
        return 1

    def _receive(self, meta: BucketMeta) -> None:
        self._received = self._group.receive(meta, "cpu")

    def _apply_received(self) -> None:
        bucket, self._received = self._received, None
        self._apply_bucket(bucket)


def check_groups(engine, groups, n_prompts: int, group_size: int, max_new_tokens: int) -> None:
    """What every engine's `generate` promises: G samples per prompt, each with one finite
    log-probability (<= 0) per token, no vision special token, the served version, and
    `truncated` exactly when no end-of-sequence token closes it."""
    assert len(groups) == n_prompts
    forbidden = set(engine.suppress_ids)
    for group in groups:
        assert len(group) == group_size
        for s in group:
            assert 0 < len(s.token_ids) <= max_new_tokens
            assert len(s.logprobs) == len(s.token_ids)
            assert s.version == engine.version
            assert all(np.isfinite(s.logprobs)) and all(lp <= 0 for lp in s.logprobs)
            assert not forbidden & set(s.token_ids)
            assert s.truncated == (engine.eos_id not in s.token_ids)
            if not s.truncated:
                assert s.token_ids.index(engine.eos_id) == len(s.token_ids) - 1
            assert isinstance(s.text, str)


def check_unannounced_bucket_refused_without_stalling(engine: BucketReceiver, group: WeightGroup,
                                                      state: dict[str, torch.Tensor], bucket_bytes: int) -> None:
    """A broadcast bucket the plan did not announce: the engine still takes part in the broadcast
    (the sender returns instead of stalling), then refuses it; the served version stays."""
    served = engine.version
    engine.begin_update(served + 1, tensor_spec(state), group.address)
    bucket = next(iter(buckets(state, bucket_bytes)))
    first = next(iter(bucket))
    renamed = {("not_a." + k if k == first else k): v for k, v in bucket.items()}
    engines = LocalEngines([engine])
    refused = engines.call("receive_bucket", [(bucket_meta(renamed),)])
    group.send(bucket)
    with pytest.raises(ValueError, match="not announced"):
        engines.wait(refused)
    assert engine.version == served
