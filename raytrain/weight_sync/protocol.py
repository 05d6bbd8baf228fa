"""Versioned weight sync between the trainer and rollout engines, as pure code (no Ray).

The sender splits a state dict into size-bounded buckets (`buckets`) and announces
the names and shapes it will send (`tensor_spec`). The receiver checks that plan
against what its model serves before applying anything, accepts each bucket once,
and only then moves to the new version (`WeightUpdate`). Engines get the receiving
steps from `BucketReceiver`.

A bucket reaches an engine either as tensors (the caller moved them: the Ray object
store) or over a `WeightGroup`: a process group of its own between the sending rank
(rank 0) and the engines' processes, where each bucket is one flat broadcast (NCCL on
GPUs, gloo on CPU). The group is separate from the trainer's default process group,
so joining or leaving it never touches the training collective.
"""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
import torch.distributed as dist

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


def pack_bucket(bucket: dict[str, torch.Tensor]) -> tuple[BucketMeta, bytes]:
    """One bucket as its meta and one byte string: crosses process boundaries whose serialisers
    do not carry tensors (vLLM's engine-core RPC)."""
    return bucket_meta(bucket), flatten_bucket({k: v.to("cpu") for k, v in bucket.items()}).numpy().tobytes()


def unpack_bucket(meta: BucketMeta, data: bytes) -> dict[str, torch.Tensor]:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return unflatten_bucket(meta, flat)


@dataclass(frozen=True)
class GroupAddress:
    """Where a weight group meets: rank 0's rendezvous store. Sent to every member."""

    host: str
    port: int
    world_size: int
    backend: Literal["gloo", "nccl"]
    timeout_s: float


class WeightGroup:
    """A process group of its own between the sender (rank 0) and the engines' processes.

    Built from torch's process-group classes over a TCP store, not `init_process_group`:
    the trainer's default group (Ray Train's) and vLLM's own groups stay untouched, and a
    restarted sender simply opens a new group that the engines join in place of the old.
    Every member must call `send` (rank 0) or `receive` (the others) for every bucket, in
    the same order: a member that leaves out a bucket stalls the others until the timeout.
    """

    def __init__(self, address: GroupAddress, rank: int, store: dist.Store):
        if not 0 <= rank < address.world_size:
            raise ValueError(f"weight group rank {rank} outside a group of {address.world_size}")
        self.address, self.rank, self._store = address, rank, store
        timeout = datetime.timedelta(seconds=address.timeout_s)
        group_cls = dist.ProcessGroupNCCL if address.backend == "nccl" else dist.ProcessGroupGloo
        # gloo connects every pair here (blocks until all joined); NCCL creates its communicator at the first broadcast.
        self._group = group_cls(dist.PrefixStore("weights", store), rank, address.world_size, timeout)

    @staticmethod
    def host_store(host: str, world_size: int, backend: Literal["gloo", "nccl"], timeout_s: float) -> tuple[GroupAddress, dist.Store]:
        """Rank 0's rendezvous store on a free port of `host`; open the group with `WeightGroup(address, 0, store)`
        once the other members were told the address (opening blocks until they join)."""
        store = dist.TCPStore(host, 0, None, True, timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
        return GroupAddress(host, store.port, world_size, backend, timeout_s), store

    @classmethod
    def join(cls, address: GroupAddress, rank: int) -> "WeightGroup":
        store = dist.TCPStore(address.host, address.port, None, False, timeout=datetime.timedelta(seconds=address.timeout_s))
        return cls(address, rank, store)

    @property
    def device(self) -> torch.device:
        """Where the broadcasts' buffers live: this process's GPU for NCCL (it takes CUDA tensors only),
        the CPU for gloo."""
        return torch.device("cuda", torch.cuda.current_device()) if self.address.backend == "nccl" else torch.device("cpu")

    def send(self, bucket: dict[str, torch.Tensor]) -> None:
        """Broadcast one bucket from rank 0 as a single flat tensor, moved to `device` unless it is there."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 of a weight group sends")
        self._group.broadcast(flatten_bucket(bucket).to(self.device), 0).wait()

    def receive(self, meta: BucketMeta, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The bucket rank 0 sends with this `meta`, as tensors on `device`."""
        flat = torch.empty(_layout(meta)[1], dtype=torch.uint8, device=self.device)
        self._group.broadcast(flat, 0).wait()
        return unflatten_bucket(meta, flat.to(device))


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

    def update_weights(self, state: dict[str, torch.Tensor], version: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
        """The whole sync in one process (tests, single-process use)."""
        self.begin_update(version, tensor_spec(state))
        for bucket in buckets(state, bucket_bytes):
            self.load_bucket(bucket)
        return self.finish_update()



def open_local_group(receiver: BucketReceiver, ranks: int = 1, backend: Literal["gloo", "nccl"] = "gloo",
                     timeout_s: float = 60.0) -> WeightGroup:
    """A weight group between this thread (rank 0) and an engine in this process that takes `ranks`
    ranks (tests, benchmarks; the trainer uses `actors.rollout.open_weight_group`)."""
    address, store = WeightGroup.host_store("127.0.0.1", 1 + ranks, backend, timeout_s)
    with ThreadPoolExecutor(1) as pool:
        joined = pool.submit(receiver.join_weight_group, address, 1)
        try:
            group = WeightGroup(address, 0, store)
        except Exception:
            joined.result()  # the engine's own error (a refused join) says more than the rendezvous timeout
            raise
        if joined.result() != ranks:
            raise RuntimeError(f"the engine took {joined.result()} weight-group ranks, {ranks} were planned")
    return group


def broadcast_update(receiver: BucketReceiver, group: WeightGroup, state: dict[str, torch.Tensor], version: int,
                     bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
    """`update_weights` over `group` to an engine in this process: it receives on a second thread
    while this one sends each bucket."""
    receiver.begin_update(version, tensor_spec(state), group.address)
    with ThreadPoolExecutor(1) as pool:
        for bucket in buckets(state, bucket_bytes):
            received = pool.submit(receiver.receive_bucket, bucket_meta(bucket))
            group.send(bucket)
            received.result()
    return receiver.finish_update()
