"""Bucketed, versioned weight sync (raytrain.weight_sync.protocol, .group) on hand-made state dicts, without Ray or a model."""

from __future__ import annotations

import dataclasses
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import torch

from raytrain.config.sections import ModelConfig, RolloutConfig
from raytrain.engines.base import make_engine
from raytrain.weight_sync.group import WeightGroup
from raytrain.weight_sync.protocol import (
    WeightUpdate,
    bucket_meta,
    buckets,
    check_spec,
    from_host_arrays,
    pack_bucket,
    tensor_spec,
    to_host_arrays,
    unpack_bucket,
)
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights
from tests.helpers.engine_checks import DictEngine, check_unannounced_bucket_refused_without_stalling


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
    update.accept({"a": (10,)})
    with pytest.raises(ValueError, match="not announced or sent twice: \\['a'\\]"):
        update.accept({"a": (10,)})
    with pytest.raises(ValueError, match="wrong shape for \\['b'\\]"):
        update.accept({"b": (3, 2)})
    with pytest.raises(ValueError, match="incomplete: 3 announced tensors never arrived"):
        update.finish()
    update.accept({"b": (2, 3), "c": (100,), "d": (2,)})
    assert update.finish() == 5


def test_receiver_versions_advance_only_on_complete_syncs():
    eng = DictEngine(_state())
    push_weights(LocalEngines([eng]), _state(), 1, bucket_bytes=64)
    assert eng.applied == [["a", "b"], ["c"], ["d"]] and eng.committed == [1] and eng.version == 1
    assert torch.equal(eng.weights["c"], torch.arange(100, dtype=torch.float32))

    # A bad plan changes nothing: checked before any bucket is applied.
    bad = _state()
    bad["zz"] = torch.ones(1)
    with pytest.raises(ValueError, match="unexpected \\['zz'\\]"):
        push_weights(LocalEngines([eng]), bad, 2)
    assert eng.version == 1 and len(eng.applied) == 3

    eng.check_serving()

    # A sync cut short after a bucket was applied: the version stays, and the engine refuses
    # to generate from a mix of two versions until a complete sync arrives.
    eng.begin_update(2, tensor_spec(_state()))
    eng.load_bucket({"a": torch.ones(10)})
    with pytest.raises(ValueError, match="incomplete"):
        eng.finish_update()
    assert eng.version == 1 and eng.committed == [1]
    with pytest.raises(RuntimeError, match="version 2 failed after loading part"):
        eng.check_serving()
    with pytest.raises(RuntimeError, match="without begin_update"):
        eng.load_bucket({"a": torch.ones(10)})
    push_weights(LocalEngines([eng]), _state(), 3)
    assert eng.version == 3 and eng.committed == [1, 3]
    eng.check_serving()

    # A sender that vanished mid-sync: part of version 4 is loaded, so the engine serves no single
    # version (a restarted trainer sees that and syncs again); the next begin_update aborts it.
    assert eng.served_version() == 3
    eng.begin_update(4, tensor_spec(_state()))
    assert eng.served_version() == 3  # announced, nothing loaded yet
    eng.load_bucket({"b": torch.ones(2, 3)})
    assert eng.served_version() is None and eng.version == 3
    with pytest.raises(RuntimeError, match="version 4 has loaded part of its weights"):
        eng.check_serving()
    eng.begin_update(5, tensor_spec(_state()))
    with pytest.raises(RuntimeError, match="version 4 failed"):
        eng.check_serving()
    for bucket in buckets(_state(), 64):
        eng.load_bucket(bucket)
    assert eng.finish_update() == 5
    eng.check_serving()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, None])
def test_pack_unpack_roundtrip(dtype):
    bucket = {"w": torch.randn(3, 4), "b": torch.arange(5), "s": torch.tensor(7), "h": torch.randn(3).to(torch.bfloat16)}
    bucket = {k: v.to(dtype) for k, v in bucket.items()} if dtype else bucket  # None: mixed dtypes, unaligned sizes
    meta, data = pack_bucket(bucket)
    payload = sum(t.numel() * t.element_size() for t in bucket.values())
    assert isinstance(data, bytes) and payload <= len(data) < payload + 16 * len(bucket)
    out = unpack_bucket(meta, data)
    assert list(out) == list(bucket)
    for k, v in bucket.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    with pytest.raises(ValueError, match="holds"):
        unpack_bucket(meta, data + b"\0")


def test_host_arrays_travel_out_of_band_and_come_back_as_the_same_tensors():
    # Mixed dtypes (bfloat16 has no NumPy dtype), a 0-d tensor and a non-contiguous one.
    bucket = {"w": torch.randn(3, 4), "t": torch.randn(4, 3).t(), "b": torch.arange(5), "s": torch.tensor(7),
              "h": torch.randn(3).to(torch.bfloat16), "m": torch.tensor([True, False])}
    buffers = []
    # As Ray's object store pickles it (protocol 5): every tensor's bytes are a buffer of their own, not pickled.
    data = pickle.dumps(to_host_arrays(bucket), protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == len(bucket) and len(data) < 2048
    meta, arrays = pickle.loads(data, buffers=[memoryview(b.raw()).toreadonly() for b in buffers])
    out = from_host_arrays(meta, arrays)  # read-only arrays, as the store hands them out
    assert list(out) == list(bucket)
    for k, v in bucket.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and torch.equal(out[k], v), k
    with pytest.raises(ValueError, match="describes 6 tensors and carries 5"):
        from_host_arrays(meta, arrays[:-1])


def test_weight_group_broadcasts_each_bucket_to_every_member():
    bucket = {"w": torch.randn(3, 4), "h": torch.randn(5).to(torch.bfloat16), "i": torch.arange(6).reshape(2, 3), "s": torch.tensor(7.0)}
    address, store = WeightGroup.host_store("127.0.0.1", 3, "gloo", 30.0)
    with ThreadPoolExecutor(2) as pool:
        members = [pool.submit(WeightGroup.join, address, rank) for rank in (1, 2)]
        sender = WeightGroup(address, 0, store)
        receivers = [m.result() for m in members]
        got = [pool.submit(r.receive, bucket_meta(bucket), "cpu") for r in receivers]
        sender.send(bucket)
        for out in (g.result() for g in got):
            assert list(out) == list(bucket)
            for k, v in bucket.items():
                assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    with pytest.raises(RuntimeError, match="only rank 0"):
        receivers[0].send(bucket)
    with pytest.raises(ValueError, match="rank 3 outside a group of 3"):
        WeightGroup(address, 3, store)


def test_transformers_engine_receives_full_weights_by_broadcast(tiny_model_dir):
    from raytrain.models.loading import load_processor, sync_state
    from raytrain.models.tiny import build_tiny_model

    cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    engine = make_engine(cfg, RolloutConfig())
    trained = sync_state(build_tiny_model(load_processor(cfg), seed=1))
    bucket_bytes = 256 << 10
    assert len(list(buckets(trained, bucket_bytes))) > 3
    engine.begin_update(1, tensor_spec(trained))
    with pytest.raises(RuntimeError, match="before this engine joined a weight group"):
        engine.receive_bucket(bucket_meta(next(buckets(trained, bucket_bytes))))

    engines = LocalEngines([engine])
    group = open_weight_group(engines, "gloo", timeout_s=30.0)
    push_weights(engines, trained, 1, bucket_bytes, group)
    assert engine.version == 1
    served = engine.model.state_dict()
    assert all(torch.equal(served[k], v) for k, v in trained.items())

    check_unannounced_bucket_refused_without_stalling(engine, group, trained, bucket_bytes)
    # A sync announced for a group this engine is not in fails at once, before any broadcast.
    elsewhere = dataclasses.replace(group.address, port=group.address.port + 1)
    with pytest.raises(RuntimeError, match="not in the sender's weight group"):
        engine.begin_update(3, tensor_spec(trained), elsewhere)
    initial = sync_state(build_tiny_model(load_processor(cfg), seed=0))
    push_weights(engines, initial, 3, bucket_bytes, group)
    assert engine.version == 3
    served = engine.model.state_dict()
    assert all(torch.equal(served[k], v) for k, v in initial.items())


def test_vllm_engine_without_vllm_says_how_to_install():
    import raytrain.engines.vllm_engine  # noqa: F401  (imports without vLLM)

    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ImportError, match=r"pip install -e \.\[vllm\]"):
        make_engine(ModelConfig(path="unused"), RolloutConfig(engine="vllm"))


def test_the_weight_group_store_listens_on_the_loopback_alone():
    """Issue 17 item 8: the one port the project opens itself binds to 127.0.0.1, not every interface."""
    address, store = WeightGroup.host_store("127.0.0.1", 2, "gloo", 30.0)
    listening = {c.laddr.ip for c in psutil.Process(os.getpid()).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == address.port}
    assert listening == {"127.0.0.1"}
    with ThreadPoolExecutor(1) as pool:  # and it still works as a rendezvous
        member = pool.submit(WeightGroup.join, address, 1)
        WeightGroup(address, 0, store)
        assert member.result().rank == 1
