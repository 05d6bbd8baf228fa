"""Rollout actor: holds one engine and serves generation and weight updates; `RolloutActors` lets the
weight-sync sender (`raytrain.weight_sync.sender`) reach a list of them.

Ray runs an actor's calls one at a time. Under `rollout.mode: async` the actors are started as
`OverlappingRolloutActor`, with a concurrency group of their own for the sync calls (`WEIGHTS`), so
weights arrive while the actor generates; the transformers engine stages them and swaps them in
between generate calls."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ray
import torch

from raytrain.config.sections import ModelConfig, RolloutConfig, SamplingConfig
from raytrain.data.batch import Prompt, Refusal, Sample
from raytrain.engines.base import make_engine
from raytrain.observe.ray_metrics import RolloutMetrics
from raytrain.weight_sync.group import GroupAddress
from raytrain.weight_sync.protocol import BucketMeta, HostBucket, Shape, from_host_arrays, to_host_arrays

WEIGHTS = "weights"  # the concurrency group of the sync calls, in `OverlappingRolloutActor`
SYNC_CALLS = ("begin_update", "load_bucket", "finish_update", "join_weight_group", "receive_bucket")


@ray.remote
class RolloutActor:
    def __init__(self, model: ModelConfig, rollout: RolloutConfig, weights: str | None = None,
                 tags: dict[str, str] | None = None):
        torch.set_num_threads(rollout.torch_threads)
        self.engine = make_engine(model, rollout, weights=weights)
        self.metrics = RolloutMetrics(tags) if tags else None  # a training run's actors export Ray metrics

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, greedy: bool = False) -> list[list[Sample] | Refusal]:
        t0 = time.perf_counter()
        groups = self.engine.generate(prompts, sampling, greedy=greedy)
        if self.metrics:
            samples = [s for group in groups if not isinstance(group, Refusal) for s in group]
            self.metrics.generated([len(s.token_ids) for s in samples], sum(s.truncated for s in samples), time.perf_counter() - t0)
        return groups

    def begin_update(self, version: int, plan: dict[str, Shape], group: GroupAddress | None = None) -> None:
        self.engine.begin_update(version, plan, group)

    def load_bucket(self, bucket: HostBucket) -> None:
        self.engine.load_bucket(from_host_arrays(*bucket))

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

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def pid(self) -> int:
        return os.getpid()


# The same actor with the sync calls in a thread of their own beside generation (`rollout.mode: async`).
OverlappingRolloutActor = ray.remote(concurrency_groups={WEIGHTS: 1})(RolloutActor.__ray_actor_class__)


class RolloutActors:
    """Rollout actors as the weight-sync sender reaches them (`raytrain.weight_sync.sender.Engines`): calls
    are actor tasks, a bucket goes into the object store once for all of them, rank 0's store listens on this node.
    `overlapping`: the actors are `OverlappingRolloutActor`s, whose sync calls run beside a generate call."""

    def __init__(self, actors: list, overlapping: bool = False):
        self.actors = actors
        self.group = WEIGHTS if overlapping else None

    @property
    def host(self) -> str:
        """127.0.0.1 when every actor runs on this node (the store then listens on the loopback alone), else
        this node's address, which the actors on other nodes reach."""
        here = ray.util.get_node_ip_address()
        nodes = ray.get([actor.node_ip.remote() for actor in self.actors])
        return "127.0.0.1" if all(ip == here for ip in nodes) else here

    def __len__(self) -> int:
        return len(self.actors)

    def call(self, method: str, args: Sequence[tuple]) -> list[ray.ObjectRef]:
        options = {"concurrency_group": self.group} if self.group and method in SYNC_CALLS else {}
        return [getattr(actor, method).options(**options).remote(*actor_args)
                for actor, actor_args in zip(self.actors, args, strict=True)]

    def wait(self, pending: list[ray.ObjectRef]) -> list:
        return ray.get(pending)

    def share(self, bucket: dict[str, torch.Tensor]) -> ray.ObjectRef:
        return ray.put(to_host_arrays(bucket))


def start_rollout_actors(model: ModelConfig, rollout: RolloutConfig, *, weights: str | None = None, name_prefix: str | None = None,
                         max_restarts: int = 0, tags: dict[str, str] | None = None) -> list:
    """`rollout.num_actors` actors (`OverlappingRolloutActor`s under `rollout.mode: async`); named (and so
    findable by Ray Train workers) when `name_prefix` is set.
    Ray restarts a dead one up to `max_restarts` times, serving `weights` (version 0) until a sync.
    With `rollout.python` they run in that interpreter's environment (Ray's per-actor `py_executable`:
    on CPU, vLLM's own torch in .venv-vllm beside the trainer's .venv). `tags`
    (`raytrain.observe.ray_metrics.run_tags`): export Ray metrics under them."""
    actors = []
    for i in range(rollout.num_actors):
        options = {"num_cpus": rollout.num_cpus, "num_gpus": rollout.num_gpus, "resources": dict(rollout.resources),
                   "max_restarts": max_restarts}
        if name_prefix:
            options["name"] = f"{name_prefix}-rollout-{i}"
        if rollout.python:
            options["runtime_env"] = {"py_executable": rollout.python}
        actor_class = OverlappingRolloutActor if rollout.mode == "async" else RolloutActor
        actors.append(actor_class.options(**options).remote(model, rollout, weights, tags))
    return actors


def wait_loaded(actors: list) -> None:
    """Return once every actor has loaded its engine, raising the first load error: a caller that waits here
    before training sees a bad model folder at start, not mid-run (and can do other work while they load)."""
    ray.get([a.version.remote() for a in actors])
