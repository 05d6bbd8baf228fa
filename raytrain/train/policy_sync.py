"""The trained policy's weights to the rollout engines: rank 0's weight group, the ZeRO-3 gather, the
versioned push (`raytrain.weight_sync.sender` over `actors.rollout.RolloutActors`)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from actors.rollout import RolloutActors
from raytrain.config import Config
from raytrain.models.loading import sync_state
from raytrain.observe.console import say
from raytrain.weight_sync.group import WeightGroup
from raytrain.weight_sync.sender import open_weight_group, push_weights


def weight_group(cfg: Config, rollouts: list) -> WeightGroup | None:
    """Rank 0's weight group with the engines when weights travel by broadcast (`rollout.weight_transport`)."""
    if not rollouts or cfg.weight_transport() != "broadcast":
        return None
    backend = "nccl" if cfg.train.use_gpu else "gloo"
    ranks = cfg.rollout.vllm.tensor_parallel_size if cfg.rollout.engine == "vllm" else 1
    group = open_weight_group(_reached(cfg, rollouts), backend, cfg.rollout.weight_group_timeout_s, ranks)
    say(f"[train] weight sync: {backend} broadcast to {len(rollouts)} rollout actor(s), {group.address.world_size} ranks")
    return group


def gathered_weights(engine, cfg: Config) -> dict[str, torch.Tensor] | None:
    """Under ZeRO-3, whose ranks each hold a shard of every parameter, the module's state dict gathered
    onto rank 0 a layer at a time (a collective: every rank calls this; only the adapter under LoRA).
    None otherwise: rank 0 reads its own whole module."""
    if cfg.train.zero_stage != 3:
        return None
    return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=cfg.model.lora.enabled)


def push_policy(engine, cfg: Config, rollouts: list, version: int, rank: int, group: WeightGroup | None,
                gathered: dict[str, torch.Tensor] | None) -> int:
    """Rank 0 sends the policy (the adapter alone under LoRA; `gathered`: `gathered_weights`) in
    buckets; every rank waits for it. Returns the bytes sent to each engine (0 on other ranks)."""
    sent = 0
    if rank == 0:
        # The live weights, not a copy: a broadcast flattens each bucket from them (on the GPU under NCCL: no host
        # round trip), and the object store's put copies each bucket (from a GPU through the host, a bucket at a time).
        state = sync_state(engine.module, gathered, cpu_copy=False)
        push_weights(_reached(cfg, rollouts), state, version, cfg.rollout.weight_bucket_mb << 20, group)
        sent = sum(t.numel() * t.element_size() for t in state.values())
    dist.barrier()
    return sent


def _reached(cfg: Config, rollouts: list) -> RolloutActors:
    # Under `rollout.mode: async` a sync runs beside the generate calls a rank submitted ahead.
    return RolloutActors(rollouts, overlapping=cfg.rollout.mode == "async")
