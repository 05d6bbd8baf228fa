"""The Ray Train worker loop: set up, resume, then each step collect a batch, update with DeepSpeed,
sync weights, log and checkpoint.

The algorithm (`raytrain.train.algorithms`, by `algorithm.name`) says what differs between DAPO, PRPO
and SFT: how a rank's batch is collected (rollouts with dynamic sampling, or supervised targets), the
loss, and whether rollout engines need the new weights. Every rank takes one DeepSpeed step on its
batch (`raytrain.train.step`); rank 0 then pushes the new weights (or only the LoRA adapter) to every
rollout actor, versioned (`raytrain.train.policy_sync`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import ray
import ray.train
import torch

from raytrain.config import parse_config
from raytrain.models.loading import load_family, load_policy, without_lora
from raytrain.train.algorithms import ALGORITHMS
from raytrain.train.checkpoint import DEEPSPEED_TAG, TrainerState, save_checkpoint
from raytrain.train.experience import PromptFeed
from raytrain.train.metrics import log_metrics, step_metrics
from raytrain.train.policy_sync import gathered_weights, push_policy, weight_group
from raytrain.train.step import deepspeed_engine, sum_across_ranks, train_step


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = parse_config(loop_config["config"])
    algorithm = ALGORITHMS[cfg.algorithm.name]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.run.seed + rank)

    # The model side: its family (prompts, collation, tokens never sampled), the padding pass, the policy.
    rollouts, reward_actor = loop_config["rollout_actors"], loop_config["reward_actor"]
    family = load_family(cfg.model)
    (padding,) = family.padding_batch().micro_batches(1, family.collate)
    model = load_policy(cfg.model)
    if rank == 0:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"[train] trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)", flush=True)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    engine = deepspeed_engine(cfg, model)
    ref_model = None
    if algorithm.uses_reference(cfg.algorithm):
        # The initial policy, frozen: only loaded when a KL term is on.
        ref_model = load_policy(without_lora(cfg.model)).to(engine.device).eval().requires_grad_(False)

    group = weight_group(cfg, rollouts) if rank == 0 else None
    state = TrainerState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DEEPSPEED_TAG, load_module_strict=not cfg.model.lora.enabled)
            state = TrainerState.load(d)
        if rank == 0:
            print(f"[train] resumed at step {state.step} (policy version {state.version}, "
                  f"{len(state.consumed)} prompts consumed)", flush=True)
    # After a restart the engines may serve another version: a later one (synced before the step's
    # checkpoint was recorded), their initial weights (a restarted rollout actor) or part of a sync
    # whose sender died. Rank 0 looks and every rank learns the answer, so all push or none.
    if algorithm.needs_rollouts:
        served = ray.get([a.served_version.remote() for a in rollouts]) if rank == 0 else []
        (behind,) = sum_across_ranks([float(any(v != state.version for v in served))])
        if behind:
            push_policy(engine, cfg, rollouts, state.version, rank, group, gathered_weights(engine, cfg))

    feed = PromptFeed(ray.train.get_dataset_shard("train"), cfg.train.prompts_per_worker, set(state.consumed))
    rollout = rollouts[rank % len(rollouts)] if rollouts else None
    out_dir = Path(cfg.run.output_dir)
    engine.train()
    total_steps = cfg.train.total_steps or math.inf  # null: until the data runs out
    while state.step < total_steps:
        t0 = time.perf_counter()
        batch, stats = algorithm.collect(cfg, feed, rollout, reward_actor, state.version, family)
        t_rollout = time.perf_counter() - t0
        mask = batch.per_token["loss_mask"] if batch is not None else torch.zeros(0, 0)
        global_tokens, global_rows, global_seqs, ranks_with_data = sum_across_ranks(
            [float(mask.sum()), float(mask.shape[0]), float((mask.sum(-1) > 0).sum()), float(not feed.exhausted)]
        )
        if global_rows == 0 and ranks_with_data == 0:
            # Every rank has run out of data: record the final data position (skipped media
            # drawn in this last round included) and stop.
            save_checkpoint(engine, family.processor, cfg, state, rank, feed, {"step": state.step, "data_exhausted": 1},
                            gathered_weights(engine, cfg), "_end")
            break
        if global_rows == 0:
            if rank == 0:
                print(f"[train] no informative groups in {cfg.algorithm.max_generation_rounds} generation rounds; "
                      "drawing new prompts without an update", flush=True)
            continue

        t1 = time.perf_counter()
        stats.update(train_step(cfg, algorithm, family, engine, ref_model, batch, global_tokens, global_seqs, world, padding))
        state.step += 1
        state.version += 1
        sync = algorithm.needs_rollouts
        checkpoint_now = state.step % cfg.train.checkpoint_every == 0 or state.step >= total_steps
        # Under ZeRO-3 the weight gather is a collective over the whole model: once for the sync and the export.
        t2 = time.perf_counter()
        gathered = gathered_weights(engine, cfg) if sync or checkpoint_now else None
        if sync:
            push_policy(engine, cfg, rollouts, state.version, rank, group, gathered)
        t_sync = time.perf_counter() - t2 if sync else 0.0
        t_train = time.perf_counter() - t1 - t_sync

        metrics = step_metrics(algorithm, state, stats, global_tokens, len(feed.skipped))
        metrics.update({"time/rollout_s": t_rollout, "time/train_s": t_train, "time/weight_sync_s": t_sync})
        if rank == 0:
            log_metrics(out_dir, metrics)
        if checkpoint_now:
            save_checkpoint(engine, family.processor, cfg, state, rank, feed, metrics, gathered)
        else:
            ray.train.report(metrics)
