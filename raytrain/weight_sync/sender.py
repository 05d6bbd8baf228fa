"""The weight-sync sender: rank 0 sends a state to every rollout engine, however the engines are reached.

`open_weight_group` and `push_weights` run the receiving steps of `BucketReceiver` on every
engine through an `Engines` transport: Ray actors (`actors.rollout.RolloutActors`, the
trainer) or engines in this process (`LocalEngines`: tests, benchmarks). Each step is
started on every engine before rank 0 waits for any, so a broadcast finds every member in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import Any, Literal, Protocol

import torch

from raytrain.weight_sync.group import WeightGroup
from raytrain.weight_sync.protocol import DEFAULT_BUCKET_BYTES, BucketReceiver, bucket_meta, buckets, tensor_spec


class Engines(Protocol):
    """How rank 0 reaches the engines: a method started on every engine without waiting, then waited for."""

    @property
    def host(self) -> str:
        """The address rank 0's rendezvous store binds to: one every engine can reach."""

    def __len__(self) -> int:
        """How many engines."""

    def call(self, method: str, args: Sequence[tuple]) -> list:
        """Start `method(*args[i])` on engine i, for every engine; one pending result per engine."""

    def wait(self, pending: list) -> list:
        """The results of `call`, in engine order, once every call ended; raises the first engine's error."""

    def share(self, bucket: dict[str, torch.Tensor]) -> Any:
        """What every engine's `load_bucket` receives for `bucket` (a Ray object ref: one copy for all)."""


def _start(engines: Engines, method: str, *args) -> list:
    """`method(*args)` started on every engine."""
    return engines.call(method, [args] * len(engines))


def open_weight_group(engines: Engines, backend: Literal["gloo", "nccl"], timeout_s: float,
                      ranks_per_engine: int = 1) -> WeightGroup:
    """A weight group with this process as rank 0 (the sender) and every engine's processes after it:
    `ranks_per_engine` each (a vLLM engine's tensor-parallel workers; checked)."""
    world = 1 + ranks_per_engine * len(engines)
    address, store = WeightGroup.host_store(engines.host, world, backend, timeout_s)
    joined = engines.call("join_weight_group", [(address, 1 + i * ranks_per_engine) for i in range(len(engines))])
    try:
        group = WeightGroup(address, 0, store)  # returns once every member joined
    except Exception:
        engines.wait(joined)  # an engine's own error (a refused join) says more than the rendezvous timeout
        raise
    taken = engines.wait(joined)
    if any(n != ranks_per_engine for n in taken):
        raise RuntimeError(f"rollout engines take {taken} weight-group ranks each, {ranks_per_engine} were planned")
    return group


def push_weights(engines: Engines, state: dict[str, torch.Tensor], version: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 group: WeightGroup | None = None) -> None:
    """Send `state` to every engine as size-bounded buckets, never one call per tensor: each shared once
    (`Engines.share`: one `ray.put`) with one call per engine, or as one broadcast per bucket over `group`
    (`open_weight_group`). Raises unless every engine serves `version`."""
    address = group.address if group is not None else None
    engines.wait(_start(engines, "begin_update", version, tensor_spec(state), address))
    for bucket in buckets(state, bucket_bytes):
        if group is None:
            shared = engines.share(bucket)
            # One bucket in flight: the object store holds at most `bucket_bytes` of this sync at a time.
            engines.wait(_start(engines, "load_bucket", shared))
            del shared
        else:
            received = _start(engines, "receive_bucket", bucket_meta(bucket))
            group.send(bucket)
            engines.wait(received)
    served = engines.wait(_start(engines, "finish_update"))
    if any(v != version for v in served):
        raise RuntimeError(f"weight sync to version {version} did not take effect: rollout engines serve {served}")


class LocalEngines:
    """Engines in this process (tests, benchmarks), each call run on the engine's own worker thread: this
    thread, rank 0, broadcasts while they receive. One thread per engine runs its calls one at a time and in
    order, as a Ray actor does; a bucket is shared as itself."""

    host = "127.0.0.1"

    def __init__(self, engines: Sequence[BucketReceiver]):
        self.engines = list(engines)
        self._workers = [ThreadPoolExecutor(1) for _ in self.engines]

    def __len__(self) -> int:
        return len(self.engines)

    def call(self, method: str, args: Sequence[tuple]) -> list[Future]:
        return [worker.submit(getattr(engine, method), *engine_args)
                for engine, worker, engine_args in zip(self.engines, self._workers, args, strict=True)]

    def wait(self, pending: list[Future]) -> list:
        wait_all(pending)  # as `ray.get`: no call still runs once an error is raised
        return [p.result() for p in pending]

    def share(self, bucket: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return bucket
