"""Buckets by broadcast (torch.distributed): each bucket is one flat broadcast from the sender to the
engines' processes (NCCL on GPUs, gloo on CPU), over a group separate from the trainer's default
process group, so joining or leaving it never touches the training collective.
"""

from __future__ import annotations

import datetime
import socket
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from raytrain.weight_sync.protocol import BucketMeta, flat_size, flatten_bucket, unflatten_bucket


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
        """Rank 0's rendezvous store on a free port of `host`, listening there alone; open the group with
        `WeightGroup(address, 0, store)` once the other members were told the address (opening blocks until they join).

        A TCPStore of its own listens on every interface; on a socket bound to `host` (127.0.0.1 when the
        engines share this node) nothing off the machine can reach it."""
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
        listener.bind(sockaddr)
        listener.listen()
        port = listener.getsockname()[1]
        store = dist.TCPStore(host, port, None, True, timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False,
                              master_listen_fd=listener.detach(), use_libuv=True)  # the store owns the socket now
        return GroupAddress(host, port, world_size, backend, timeout_s), store

    @classmethod
    def join(cls, address: GroupAddress, rank: int) -> WeightGroup:
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
        flat = torch.empty(flat_size(meta), dtype=torch.uint8, device=self.device)
        self._group.broadcast(flat, 0).wait()
        return unflatten_bucket(meta, flat.to(device))
