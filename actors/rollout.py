"""Rollout actor: holds one engine and serves generation and weight updates."""

from __future__ import annotations

import os

import ray
import torch

from raytrain.config import DataConfig, ModelConfig, RolloutConfig, SamplingConfig
from raytrain.engines.base import make_engine
from raytrain.data.batch import Prompt, Sample
from raytrain.weight_sync.protocol import BucketMeta, GroupAddress, Shape, WeightGroup, bucket_meta, buckets, tensor_spec


@ray.remote
class RolloutActor:
    def __init__(self, model: ModelConfig, rollout: RolloutConfig, weights: str | None = None, data: DataConfig | None = None):
        torch.set_num_threads(rollout.torch_threads)
        self.engine = make_engine(model, rollout, weights=weights, data=data)

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, greedy: bool = False) -> list[list[Sample]]:
        return self.engine.generate(prompts, sampling, greedy=greedy)

    def begin_update(self, version: int, plan: dict[str, Shape], group: GroupAddress | None = None) -> None:
        self.engine.begin_update(version, plan, group)

    def load_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        self.engine.load_bucket(bucket)

    def finish_update(self) -> int:
        return self.engine.finish_update()

    def join_weight_group(self, address: GroupAddress, first_rank: int) -> int:
        return self.engine.join_weight_group(address, first_rank)

    def receive_bucket(self, meta: BucketMeta) -> None:
        self.engine.receive_bucket(meta)

    def version(self) -> int:
        return self.engine.version

    def served_version(self) -> int | None:
        return self.engine.served_version()

    def pid(self) -> int:
        return os.getpid()


def open_weight_group(actors: list, backend: str, timeout_s: float, ranks_per_actor: int = 1) -> WeightGroup:
    """A weight group with this process as rank 0 (the sender) and every actor's engine processes
    after it: `ranks_per_actor` each (a vLLM engine's tensor-parallel workers; checked)."""
    world = 1 + ranks_per_actor * len(actors)
    address, store = WeightGroup.host_store(ray.util.get_node_ip_address(), world, backend, timeout_s)
    joined = [a.join_weight_group.remote(address, 1 + i * ranks_per_actor) for i, a in enumerate(actors)]
    try:
        group = WeightGroup(address, 0, store)  # returns once every member joined
    except Exception:
        ray.get(joined)  # an actor's own error (a refused join) says more than the rendezvous timeout
        raise
    taken = ray.get(joined)
    if any(n != ranks_per_actor for n in taken):
        raise RuntimeError(f"rollout engines take {taken} weight-group ranks each, {ranks_per_actor} were planned")
    return group


def push_weights(actors: list, state: dict[str, torch.Tensor], version: int, bucket_bytes: int,
                 group: WeightGroup | None = None) -> None:
    """Send `state` to every actor as size-bounded buckets, never one call per tensor: through the
    object store (one `ray.put` and one call per actor per bucket), or as one broadcast per bucket
    over `group` (`open_weight_group`). Raises unless every actor serves `version`."""
    address = group.address if group is not None else None
    ray.get([a.begin_update.remote(version, tensor_spec(state), address) for a in actors])
    for bucket in buckets(state, bucket_bytes):
        if group is None:
            ref = ray.put(bucket)
            # One bucket in flight: the object store holds at most `bucket_bytes` of this sync at a time.
            ray.get([a.load_bucket.remote(ref) for a in actors])
            del ref
        else:
            received = [a.receive_bucket.remote(bucket_meta(bucket)) for a in actors]
            group.send(bucket)
            ray.get(received)
    served = ray.get([a.finish_update.remote() for a in actors])
    if any(v != version for v in served):
        raise RuntimeError(f"weight sync to version {version} did not take effect: actors serve {served}")


def start_rollout_actors(model: ModelConfig, rollout: RolloutConfig, *, weights: str | None = None, name_prefix: str | None = None,
                         data: DataConfig | None = None, max_restarts: int = 0) -> list:
    """`rollout.num_actors` actors; named (and so findable by Ray Train workers) when `name_prefix` is set.
    Ray restarts a dead one up to `max_restarts` times, serving `weights` (version 0) until a sync."""
    actors = []
    for i in range(rollout.num_actors):
        options = {"num_cpus": rollout.num_cpus, "num_gpus": rollout.num_gpus, "max_restarts": max_restarts}
        if name_prefix:
            options["name"] = f"{name_prefix}-rollout-{i}"
        actors.append(RolloutActor.options(**options).remote(model, rollout, weights, data))
    ray.get([a.version.remote() for a in actors])  # surface load errors here, not mid-training
    return actors
