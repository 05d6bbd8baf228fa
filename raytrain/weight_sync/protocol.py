"""A weight sync's plan, buckets and receiving side, as pure code (no Ray, no process group).

The sender splits a state dict into size-bounded buckets (`buckets`) and announces
the names and shapes it will send (`tensor_spec`). The receiver checks that plan
against what its model serves before applying anything, accepts each bucket once,
and only then moves to the new version (`WeightUpdate`). Engines get the receiving
steps from `BucketReceiver`. A bucket travels as tensors, as NumPy arrays (`to_host_arrays`: Ray's
object store) or flat (`flatten_bucket`: one broadcast over a `raytrain.weight_sync.group.WeightGroup`,
or one byte string).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only: the group module builds on this one
    from raytrain.weight_sync.group import GroupAddress

Shape = tuple[int, ...]

DEFAULT_BUCKET_BYTES = 256 << 20


def tensor_spec(state: dict[str, torch.Tensor]) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _listed(names: list[str]) -> str:
    return f"{names[:5]}{'...' if len(names) > 5 else ''}"


def check_spec(incoming: dict[str, Shape], expected: dict[str, Shape]) -> None:
    """Raise if `incoming` does not name exactly the tensors of `expected` with their shapes."""
    missing = sorted(set(expected) - set(incoming))
    unexpected = sorted(set(incoming) - set(expected))
    wrong = sorted(k for k in set(incoming) & set(expected) if tuple(incoming[k]) != tuple(expected[k]))
    if missing or unexpected or wrong:
        raise ValueError(
            "weight sync does not match the engine's model: "
            f"missing {_listed(missing)}, unexpected {_listed(unexpected)}, "
            f"wrong shape {[(k, tuple(incoming[k]), tuple(expected[k])) for k in wrong[:5]]}"
        )


def buckets(state: dict[str, torch.Tensor], max_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive tensors (in sorted name order) grouped so that no bucket exceeds `max_bytes`;
    a single tensor larger than that travels alone."""
    if max_bytes <= 0:
        raise ValueError(f"bucket size must be positive, got {max_bytes}")
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name in sorted(state):
        tensor = state[name]
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield bucket


BucketMeta = list[tuple[str, str, Shape]]  # (name, dtype name, shape) per tensor, in flattening order


def bucket_meta(bucket: dict[str, torch.Tensor]) -> BucketMeta:
    return [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in bucket.items()]


_ALIGN = 16  # every tensor starts at a multiple of this in a flat bucket, so any dtype can view its bytes


def _layout(meta: BucketMeta) -> tuple[list[tuple[int, int]], int]:
    """(offset, byte count) of each tensor of a flat bucket, and the flat size."""
    spans, offset = [], 0
    for _, dtype_name, shape in meta:
        offset = -(-offset // _ALIGN) * _ALIGN
        nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=getattr(torch, dtype_name)).element_size()
        spans.append((offset, nbytes))
        offset += nbytes
    return spans, offset


def flat_size(meta: BucketMeta) -> int:
    """Bytes of the flat bucket `meta` describes: what a receiver allocates for it."""
    return _layout(meta)[1]


def meta_shapes(meta: BucketMeta) -> dict[str, Shape]:
    return {name: tuple(shape) for name, _, shape in meta}


def flatten_bucket(bucket: dict[str, torch.Tensor]) -> torch.Tensor:
    """The bucket's bytes as one uint8 tensor on the bucket's device, laid out by `bucket_meta`."""
    spans, size = _layout(bucket_meta(bucket))
    device = next(iter(bucket.values())).device if bucket else "cpu"
    flat = torch.empty(size, dtype=torch.uint8, device=device)
    for (offset, nbytes), tensor in zip(spans, bucket.values()):
        flat[offset:offset + nbytes] = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    return flat


def unflatten_bucket(meta: BucketMeta, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views into `flat` named and shaped as `meta` describes."""
    spans, size = _layout(meta)
    if size != flat.numel():
        raise ValueError(f"packed weight bucket holds {flat.numel()} bytes, its entries describe {size}")
    return {name: flat[offset:offset + nbytes].view(getattr(torch, dtype_name)).reshape(shape)
            for (name, dtype_name, shape), (offset, nbytes) in zip(meta, spans)}


HostBucket = tuple[BucketMeta, list[np.ndarray]]


def to_host_arrays(bucket: dict[str, torch.Tensor]) -> HostBucket:
    """One bucket as its meta and each tensor's bytes in a NumPy array, for Ray's object store: NumPy arrays
    travel as pickle protocol 5's out-of-band buffers, written once into shared memory and read there
    without a copy (a dict of tensors is pickled through torch's own reducer: 2.2x slower to put, measured
    on 133 MB). A CPU tensor is not copied here (the put is the copy); a GPU tensor comes to the host here,
    a bucket at a time."""
    return bucket_meta(bucket), [t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
                                 for t in bucket.values()]


def from_host_arrays(meta: BucketMeta, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """The tensors of `to_host_arrays`, as views of the arrays (read-only ones from the object store: the
    receiving engine copies what it keeps before the bucket is released, and never writes to them)."""
    if len(meta) != len(arrays):
        raise ValueError(f"weight bucket describes {len(meta)} tensors and carries {len(arrays)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: torch.from_numpy(a).view(getattr(torch, dtype_name)).reshape(shape)
                for (name, dtype_name, shape), a in zip(meta, arrays)}


def pack_bucket(bucket: dict[str, torch.Tensor]) -> tuple[BucketMeta, bytes]:
    """One bucket as its meta and one byte string: crosses process boundaries whose serialisers
    do not carry tensors (vLLM's engine-core RPC)."""
    return bucket_meta(bucket), flatten_bucket({k: v.to("cpu") for k, v in bucket.items()}).numpy().tobytes()


def unpack_bucket(meta: BucketMeta, data: bytes) -> dict[str, torch.Tensor]:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return unflatten_bucket(meta, flat)


class WeightUpdate:
    """One sync in progress on the receiving side."""

    def __init__(self, version: int, plan: dict[str, Shape], expected: dict[str, Shape]):
        if version < 0:
            raise ValueError(f"weight version must be >= 0, got {version}")
        check_spec(plan, expected)  # before any tensor is applied: a bad sync changes nothing
        self.version = version
        self.plan = plan
        self.pending = set(plan)

    def accept(self, shapes: dict[str, Shape]) -> None:
        """Take note of a bucket holding these tensors (names and shapes)."""
        outside = sorted(k for k in shapes if k not in self.pending)
        if outside:
            raise ValueError(f"weight bucket for version {self.version} carries tensors not announced or sent twice: {_listed(outside)}")
        wrong = sorted(k for k, shape in shapes.items() if tuple(shape) != tuple(self.plan[k]))
        if wrong:
            raise ValueError(f"weight bucket for version {self.version} has wrong shape for {_listed(wrong)}")
        self.pending -= set(shapes)

    def finish(self) -> int:
        if self.pending:
            raise ValueError(f"weight sync to version {self.version} is incomplete: "
                             f"{len(self.pending)} announced tensors never arrived, e.g. {_listed(sorted(self.pending))}")
        return self.version


class BucketReceiver:
    """Receiving side of a sync for an engine: `begin_update`, `load_bucket` per bucket, `finish_update`.

    Buckets arrive as tensors (`load_bucket`) or over a `WeightGroup` the engine joined
    (`join_weight_group`, then `receive_bucket` per bucket).

    Subclasses provide `sync_spec()` (the names and shapes they accept), `_apply_bucket(bucket)`
    and `_commit(version)`, and `_abort()` when a failed sync needs undoing; engines that join
    weight groups override `join_weight_group` and provide `_receive` and `_apply_received`. `version` only
    advances once every announced tensor arrived. A sync that fails after some buckets were
    applied in place leaves weights of no single version: `check_serving` then refuses to
    generate until a complete sync arrives.
    """

    version: int = 0
    weight_group: GroupAddress | None = None  # the group joined last (set by `join_weight_group`)
    _update: WeightUpdate | None = None
    _broken: str | None = None
    _applied: bool = False

    def sync_spec(self) -> dict[str, Shape]:
        raise NotImplementedError

    def _apply_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def _commit(self, version: int) -> None:
        """Called once every bucket of `version` arrived, before the version is reported."""

    def _abort(self, applied: bool) -> bool:
        """Undo what a failed sync started; True when the weights of `version` are still served
        (by default: when no bucket was applied)."""
        return not applied

    def _mixed_weights(self) -> str | None:
        """Why the weights are of no single version, if they are not."""
        if self._update is not None and self._applied:  # a sender that died mid-sync leaves this
            return f"the weight sync to version {self._update.version} has loaded part of its weights and not finished"
        return self._broken

    def check_serving(self) -> None:
        reason = self._mixed_weights()
        if reason:
            raise RuntimeError(f"{reason}; this engine serves no single weight version until a complete sync arrives")

    def served_version(self) -> int | None:
        """The weight version served, or None while the weights are of no single version."""
        return None if self._mixed_weights() else self.version

    def _fail(self, update: WeightUpdate) -> None:
        self._update = None
        if not self._abort(self._applied):
            self._broken = f"the weight sync to version {update.version} failed after loading part of its weights"

    def begin_update(self, version: int, plan: dict[str, Shape], group: GroupAddress | None = None) -> None:
        """Announce a sync. `group`: the weight group its buckets will be broadcast over; refused at
        once when this engine is not in it (it restarted, say), before the sender starts a broadcast
        that would wait for it."""
        if group is not None and group != self.weight_group:
            raise RuntimeError(f"this engine is not in the sender's weight group {group.host}:{group.port} "
                               "(restarted since it joined?); the sender must open a new group")
        if self._update is not None:  # the sender of the previous sync never finished it
            self._fail(self._update)
        self._update = WeightUpdate(version, plan, self.sync_spec())
        self._applied = False

    def load_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        self._load(tensor_spec(bucket), lambda: self._apply_bucket(bucket))

    def join_weight_group(self, address: GroupAddress, first_rank: int) -> int:
        """Join (or re-join, after the sender restarted) a weight group from rank `first_rank` on;
        returns how many ranks this engine's processes take."""
        raise NotImplementedError(f"{type(self).__name__} cannot receive weights over a process group")

    def receive_bucket(self, meta: BucketMeta) -> None:
        """One bucket broadcast by rank 0 of the joined weight group. It is received before it is
        checked, so this engine takes part in the broadcast even when it then refuses the bucket
        (a member that drops out would stall the whole group)."""
        try:
            self._receive(meta)
        except Exception:  # the group broke (a member died, a timeout): this sync cannot complete
            if self._update is not None:
                self._fail(self._update)
            raise
        self._load(meta_shapes(meta), self._apply_received)

    def _receive(self, meta: BucketMeta) -> None:
        raise NotImplementedError

    def _apply_received(self) -> None:
        raise NotImplementedError

    def _load(self, shapes: dict[str, Shape], apply) -> None:
        update = self._update
        if update is None:
            raise RuntimeError("weight bucket received without begin_update")
        try:
            update.accept(shapes)
            self._applied = True
            apply()
        except Exception:
            self._fail(update)
            raise

    def finish_update(self) -> int:
        update = self._update
        if update is None:
            raise RuntimeError("finish_update without begin_update")
        try:
            version = update.finish()
            self._commit(version)
        except Exception:
            self._fail(update)
            raise
        self._update, self._broken = None, None
        self.version = version
        return self.version
