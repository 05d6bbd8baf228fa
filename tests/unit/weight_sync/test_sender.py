"""The weight-sync sender (raytrain.weight_sync.sender) to engines in this process (`LocalEngines`), by
object store and by gloo broadcast: the path the trainer takes to Ray actors, without Ray."""

from __future__ import annotations

import time

import pytest
import torch

from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests.helpers.engine_checks import DictEngine

BUCKET_BYTES = 64


def _state(seed: int) -> dict[str, torch.Tensor]:
    """float32; in 64-byte buckets (sorted order): [a (40 B), b (24 B)], [c (400 B)]."""
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in (("c", (100,)), ("a", (10,)), ("b", (2, 3)))}


def _serve(engines: LocalEngines, state: dict[str, torch.Tensor], version: int) -> None:
    for engine in engines.engines:
        assert engine.served_version() == version
        assert all(torch.equal(engine.weights[k], v) for k, v in state.items())


class _LoggedEngines(LocalEngines):
    """Logs each bucket shared; its engines log each bucket they load, in one list."""

    def __init__(self, engines, log: list):
        super().__init__(engines)
        self.log = log

    def share(self, bucket):
        self.log.append(("share", sorted(bucket)))
        return super().share(bucket)


class _LoggedEngine(DictEngine):
    def __init__(self, state, log: list):
        super().__init__(state)
        self.log = log

    def _apply_bucket(self, bucket):
        self.log.append(("load", sorted(bucket)))
        super()._apply_bucket(bucket)


def test_object_store_path_shares_one_bucket_at_a_time():
    log: list = []
    engines = _LoggedEngines([_LoggedEngine(_state(0), log) for _ in range(2)], log)
    push_weights(engines, _state(1), 1, BUCKET_BYTES)
    _serve(engines, _state(1), 1)
    # Every engine loaded a bucket before the next one is shared: one bucket of the sync in the store at a time.
    assert log == [("share", ["a", "b"]), ("load", ["a", "b"]), ("load", ["a", "b"]),
                   ("share", ["c"]), ("load", ["c"]), ("load", ["c"])]


class _RefusesOnce(DictEngine):
    """Refuses the next bucket holding the tensor named `refuse`."""

    refuse: str | None = None

    def _apply_bucket(self, bucket):
        if self.refuse in bucket:
            self.refuse = None
            raise ValueError("this engine refuses the bucket")
        super()._apply_bucket(bucket)


def test_broadcast_to_every_engine_and_a_refused_bucket_fails_the_sync_without_stalling():
    refusing = _RefusesOnce(_state(0))
    engines = LocalEngines([DictEngine(_state(0)), refusing])
    timeout_s = 30.0
    group = open_weight_group(engines, "gloo", timeout_s)
    assert group.address.world_size == 3
    push_weights(engines, _state(1), 1, BUCKET_BYTES, group)
    _serve(engines, _state(1), 1)

    refusing.refuse = "c"  # the last bucket: the other engine has loaded part of version 2 by then
    started = time.monotonic()
    with pytest.raises(ValueError, match="refuses the bucket"):
        push_weights(engines, _state(2), 2, BUCKET_BYTES, group)
    assert time.monotonic() - started < timeout_s / 2  # no member waited for a broadcast that never came
    assert [e.version for e in engines.engines] == [1, 1]
    assert [e.served_version() for e in engines.engines] == [None, None]  # each holds part of version 2
    # Every member took part in every broadcast so far, so the same group carries the next sync.
    push_weights(engines, _state(2), 3, BUCKET_BYTES, group)
    _serve(engines, _state(2), 3)


class _Stale(DictEngine):
    """Reports the version it served before the sync (an engine that lost track of its weights)."""

    def finish_update(self):
        stale = self.version
        super().finish_update()
        return stale


@pytest.mark.parametrize("broadcast", [False, True])
def test_sync_raises_unless_every_engine_serves_the_version(broadcast):
    engines = LocalEngines([DictEngine(_state(0)), _Stale(_state(0))])
    group = open_weight_group(engines, "gloo", 30.0) if broadcast else None
    with pytest.raises(RuntimeError, match=r"weight sync to version 1 did not take effect: rollout engines serve \[1, 0\]"):
        push_weights(engines, _state(1), 1, BUCKET_BYTES, group)


class _ObjectStoreOnly(DictEngine):
    def join_weight_group(self, address, first_rank):
        raise ValueError("this engine takes weights through the object store only")


class _TakesTwoRanks(DictEngine):
    def join_weight_group(self, address, first_rank):
        super().join_weight_group(address, first_rank)
        return 2


def test_open_weight_group_surfaces_the_engines_refusal_and_checks_the_ranks_taken():
    # The engine's own error, not the rendezvous timeout rank 0 runs into while it waits for the engine.
    with pytest.raises(ValueError, match="object store only"):
        open_weight_group(LocalEngines([_ObjectStoreOnly(_state(0))]), "gloo", timeout_s=2.0)
    with pytest.raises(RuntimeError, match=r"rollout engines take \[1, 2\] weight-group ranks each, 1 were planned"):
        open_weight_group(LocalEngines([DictEngine(_state(0)), _TakesTwoRanks(_state(0))]), "gloo", 30.0)
