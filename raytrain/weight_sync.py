"""Versioned weight sync between the trainer and rollout engines, as pure code (no Ray).

The sender splits a state dict into size-bounded buckets (`buckets`) and announces
the names and shapes it will send (`tensor_spec`). The receiver checks that plan
against what its model serves before applying anything, accepts each bucket once,
and only then moves to the new version (`WeightUpdate`). Engines get the three
receiving steps from `BucketReceiver`; how a bucket reaches them (Ray object
store, NCCL) is the caller's business.
"""

from __future__ import annotations

from typing import Iterator

import torch

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


def pack_bucket(bucket: dict[str, torch.Tensor]) -> tuple[list[tuple[str, str, Shape]], bytes]:
    """One bucket as (name, dtype, shape) entries and one byte string: crosses process boundaries
    whose serialisers do not carry tensors (vLLM's engine-core RPC)."""
    meta = [(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in bucket.items()]
    if not bucket:
        return meta, b""
    flat = torch.cat([t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8) for t in bucket.values()])
    return meta, flat.numpy().tobytes()


def unpack_bucket(meta: list[tuple[str, str, Shape]], data: bytes) -> dict[str, torch.Tensor]:
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    out, offset = {}, 0
    for name, dtype_name, shape in meta:
        dtype = getattr(torch, dtype_name)
        nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
        out[name] = flat[offset:offset + nbytes].view(dtype).reshape(shape)
        offset += nbytes
    if offset != flat.numel():
        raise ValueError(f"packed weight bucket holds {flat.numel()} bytes, its entries describe {offset}")
    return out


class WeightUpdate:
    """One sync in progress on the receiving side."""

    def __init__(self, version: int, plan: dict[str, Shape], expected: dict[str, Shape]):
        if version < 0:
            raise ValueError(f"weight version must be >= 0, got {version}")
        check_spec(plan, expected)  # before any tensor is applied: a bad sync changes nothing
        self.version = version
        self.plan = plan
        self.pending = set(plan)

    def accept(self, bucket: dict[str, torch.Tensor]) -> None:
        outside = sorted(k for k in bucket if k not in self.pending)
        if outside:
            raise ValueError(f"weight bucket for version {self.version} carries tensors not announced or sent twice: {_listed(outside)}")
        wrong = sorted(k for k, v in bucket.items() if tuple(v.shape) != tuple(self.plan[k]))
        if wrong:
            raise ValueError(f"weight bucket for version {self.version} has wrong shape for {_listed(wrong)}")
        self.pending -= set(bucket)

    def finish(self) -> int:
        if self.pending:
            raise ValueError(f"weight sync to version {self.version} is incomplete: "
                             f"{len(self.pending)} announced tensors never arrived, e.g. {_listed(sorted(self.pending))}")
        return self.version


class BucketReceiver:
    """Receiving side of a sync for an engine: `begin_update`, `load_bucket` per bucket, `finish_update`.

    Subclasses provide `sync_spec()` (the names and shapes they accept), `_apply_bucket(bucket)`
    and `_commit(version)`, and `_abort()` when a failed sync needs undoing. `version` only
    advances once every announced tensor arrived. A sync that fails after some buckets were
    applied in place leaves weights of no single version: `check_serving` then refuses to
    generate until a complete sync arrives.
    """

    version: int = 0
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

    def check_serving(self) -> None:
        if self._broken:
            raise RuntimeError(f"{self._broken}; this engine serves no single weight version until a complete sync arrives")

    def _fail(self, update: WeightUpdate) -> None:
        self._update = None
        if not self._abort(self._applied):
            self._broken = f"the weight sync to version {update.version} failed after loading part of its weights"

    def begin_update(self, version: int, plan: dict[str, Shape]) -> None:
        if self._update is not None:  # the sender of the previous sync never finished it
            self._fail(self._update)
        self._update = WeightUpdate(version, plan, self.sync_spec())
        self._applied = False

    def load_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        update = self._update
        if update is None:
            raise RuntimeError("weight bucket received without begin_update")
        try:
            update.accept(bucket)
            self._applied = True
            self._apply_bucket(bucket)
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
