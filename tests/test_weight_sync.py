"""Bucketed, versioned weight sync (raytrain.weight_sync) on hand-made state dicts, without Ray or a model."""

from __future__ import annotations

import pytest
import torch

from raytrain.weight_sync import BucketReceiver, WeightUpdate, buckets, check_spec, tensor_spec


def _state() -> dict[str, torch.Tensor]:
    # float32: 4 bytes per element. Sorted order: a (40 B), b (24 B), c (400 B), d (8 B).
    return {
        "c": torch.arange(100, dtype=torch.float32),
        "a": torch.ones(10),
        "d": torch.zeros(2),
        "b": torch.full((2, 3), 2.0),
    }


def test_buckets_are_size_bounded_and_cover_everything_once():
    state = _state()
    got = list(buckets(state, max_bytes=64))
    # a+b = 64 B fits exactly; c (400 B) is larger than the bound and travels alone; then d.
    assert [list(b) for b in got] == [["a", "b"], ["c"], ["d"]]
    for b in got:
        assert all(b[k] is state[k] for k in b)  # no copies on the sending side
    assert [list(b) for b in buckets(state, max_bytes=1 << 20)] == [["a", "b", "c", "d"]]
    assert [list(b) for b in buckets(state, max_bytes=1)] == [["a"], ["b"], ["c"], ["d"]]
    assert list(buckets({}, 8)) == []
    with pytest.raises(ValueError, match="positive"):
        list(buckets(state, 0))


def test_check_spec_names_every_kind_of_mismatch():
    expected = tensor_spec(_state())
    check_spec(dict(expected), expected)
    bad = {**expected, "e": (1,), "a": (11,)}
    del bad["d"]
    with pytest.raises(ValueError) as exc:
        check_spec(bad, expected)
    msg = str(exc.value)
    assert "missing ['d']" in msg and "unexpected ['e']" in msg and "wrong shape [('a', (11,), (10,))]" in msg


def test_weight_update_refuses_unannounced_duplicate_and_incomplete():
    spec = tensor_spec(_state())
    with pytest.raises(ValueError, match=">= 0"):
        WeightUpdate(-1, spec, spec)
    update = WeightUpdate(5, spec, spec)
    update.accept({"a": torch.ones(10)})
    with pytest.raises(ValueError, match="not announced or sent twice: \\['a'\\]"):
        update.accept({"a": torch.ones(10)})
    with pytest.raises(ValueError, match="wrong shape for \\['b'\\]"):
        update.accept({"b": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="incomplete: 3 announced tensors never arrived"):
        update.finish()
    update.accept({"b": torch.ones(2, 3), "c": torch.ones(100), "d": torch.ones(2)})
    assert update.finish() == 5


class _DictEngine(BucketReceiver):
    """A receiver over a plain dict: records what it applied and committed."""

    def __init__(self):
        self.weights = {k: torch.zeros_like(v) for k, v in _state().items()}
        self.applied: list[list[str]] = []
        self.committed: list[int] = []

    def sync_spec(self):
        return tensor_spec(self.weights)

    def _apply_bucket(self, bucket):
        self.applied.append(sorted(bucket))
        self.weights.update(bucket)

    def _commit(self, version):
        self.committed.append(version)


def test_receiver_versions_advance_only_on_complete_syncs():
    eng = _DictEngine()
    assert eng.update_weights(_state(), 1, bucket_bytes=64) == 1
    assert eng.applied == [["a", "b"], ["c"], ["d"]] and eng.committed == [1] and eng.version == 1
    assert torch.equal(eng.weights["c"], torch.arange(100, dtype=torch.float32))

    # A bad plan changes nothing: checked before any bucket is applied.
    bad = _state()
    bad["zz"] = torch.ones(1)
    with pytest.raises(ValueError, match="unexpected \\['zz'\\]"):
        eng.update_weights(bad, 2)
    assert eng.version == 1 and len(eng.applied) == 3

    # A sync cut short does not advance the version, and the next sync starts clean.
    eng.begin_update(2, tensor_spec(_state()))
    eng.load_bucket({"a": torch.ones(10)})
    with pytest.raises(ValueError, match="incomplete"):
        eng.finish_update()
    assert eng.version == 1 and eng.committed == [1]
    with pytest.raises(RuntimeError, match="without begin_update"):
        eng.load_bucket({"a": torch.ones(10)})
    assert eng.update_weights(_state(), 3) == 3 and eng.committed == [1, 3]
