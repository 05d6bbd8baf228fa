"""The Ray Train worker loop: set up, resume, then each step collect a batch, update with DeepSpeed,
sync weights, log and checkpoint.

The algorithm (`raytrain.train.algorithms`, by `algorithm.name`) says what differs between DAPO, PRPO
and SFT: how a rank's batch is collected (rollouts with dynamic sampling, or supervised targets), the
loss, and whether rollout engines need the new weights. Every rank takes one DeepSpeed step on its
batch (`raytrain.train.step`); rank 0 then pushes the new weights (or only the LoRA adapter) to every
rollout actor, versioned (`raytrain.train.policy_sync`), and shows the step: metrics.jsonl, the trackers of
`run.loggers`, Ray's metrics (`raytrain.observe`) and a progress bar or line on the console. With
`rollout.colocate` each rank generates with its own live module instead and nothing is synced. With
`rollout.mode: async` each rank submits the first generation round of its next `algorithm.max_staleness`
steps before it trains (`RolloutsAhead`), so its rollout actor generates while it trains and syncs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import ray
import ray.train
import torch

from raytrain.config import parse_config
from raytrain.engines.transformers_engine import LiveModuleEngine
from raytrain.models.loading import load_family, load_policy, without_lora
from raytrain.observe.console import Progress, say
from raytrain.observe.ray_metrics import StepGauges, run_tags
from raytrain.observe.trackers import Trackers
from raytrain.train.algorithms import ALGORITHMS
from raytrain.train.checkpoint import DEEPSPEED_TAG, STORAGE_DIR, TrainerState, resume_point, save_checkpoint
from raytrain.train.experience import ActorRollouts, LocalRollouts, PromptFeed, RolloutsAhead
from raytrain.train.metrics import BAR_SHOWN, SHOWN, keep_records_through, log_metrics, startup_metrics, step_metrics, step_text
from raytrain.train.policy_sync import gathered_weights, push_policy, weight_group
from raytrain.train.step import deepspeed_engine, sum_across_ranks, train_step


def train_loop_per_worker(loop_config: dict) -> None:
    entered = time.time()
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
        say(f"[train] trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    engine = deepspeed_engine(cfg, model)
    ref_model = None
    if algorithm.uses_reference(cfg.algorithm):
        # The initial policy, frozen: only loaded when a KL term is on.
        ref_model = load_policy(without_lora(cfg.model)).to(engine.device).eval().requires_grad_(False)

    # Rollout engines to keep in sync: none under `rollout.colocate`, where each rank's live module generates.
    syncs = algorithm.needs_rollouts and not cfg.rollout.colocate
    group = weight_group(cfg, rollouts) if rank == 0 and syncs else None
    state = TrainerState()
    source = resume_point(Path(cfg.run.output_dir) / STORAGE_DIR, rank)
    if source is not None:
        engine.load_checkpoint(str(source), tag=DEEPSPEED_TAG, load_module_strict=not cfg.model.lora.enabled)
        state = TrainerState.load(source)
    if rank == 0:
        keep_records_through(Path(cfg.run.output_dir), state.step)
        if source is not None:
            say(f"[train] resumed at step {state.step} (policy version {state.version}, {len(state.consumed)} prompts consumed)")
    # After a restart the engines may serve another version: a later one (synced before the step's
    # checkpoint was recorded), their initial weights (a restarted rollout actor) or part of a sync
    # whose sender died. Rank 0 looks and every rank learns the answer, so all push or none.
    if syncs:
        served = ray.get([a.served_version.remote() for a in rollouts]) if rank == 0 else []
        (behind,) = sum_across_ranks([float(any(v != state.version for v in served))])
        if behind:
            push_policy(engine, cfg, rollouts, state.version, rank, group, gathered_weights(engine, cfg))

    feed = PromptFeed(ray.train.get_dataset_shard("train"), cfg.train.prompts_per_worker, set(state.consumed))
    colocated = LiveModuleEngine(family, engine.module) if algorithm.needs_rollouts and cfg.rollout.colocate else None
    if colocated:
        rollout = LocalRollouts(colocated)
    else:
        rollout = ActorRollouts(rollouts, rank) if rollouts else None
    ahead = RolloutsAhead.for_config(cfg) if isinstance(rollout, ActorRollouts) else None
    out_dir = Path(cfg.run.output_dir)
    engine.train()
    total_steps = cfg.train.total_steps or math.inf  # null: until the data runs out
    if rank == 0:
        bar = loop_config["console_bar"]
        progress = Progress(cfg.train.total_steps, "[train] step", bar=bar, remote=True, unit="step", start=state.step)
        gauges, trackers = StepGauges(run_tags(cfg.run, cfg.algorithm)), Trackers(cfg.run, loop_config["config"], state.step)
    ready = time.time()
    try:
        t_idle_from = None  # end of the previous step's weight sync: its checkpoint and logging are idle time
        while state.step < total_steps:
            t0 = time.perf_counter()
            t_idle = t0 - t_idle_from if t_idle_from is not None else 0.0
            if colocated:
                colocated.version = state.version  # it serves the live weights: always the trainer's version
            batch, stats = algorithm.collect(cfg, feed, rollout, reward_actor, state.version, family, ahead)
            if ahead is not None:  # the next steps' first rounds generate while this one trains
                ahead.fill(cfg, feed, rollout, total_steps - state.step - 1)
            t_rollout = time.perf_counter() - t0
            mask = batch.per_token["loss_mask"] if batch is not None else torch.zeros(0, 0)
            has_data = not feed.exhausted or bool(ahead)
            global_tokens, global_rows, global_seqs, ranks_with_data = sum_across_ranks(
                [float(mask.sum()), float(mask.shape[0]), float((mask.sum(-1) > 0).sum()), float(has_data)]
            )
            if global_rows == 0 and ranks_with_data == 0:
                # Every rank has run out of data: record the final data position (skipped media
                # drawn in this last round included) and stop.
                save_checkpoint(engine, family.processor, cfg, state, rank, feed, {"step": state.step, "data_exhausted": 1},
                                gathered_weights(engine, cfg), "_end")
                break
            if global_rows == 0:
                if rank == 0:
                    say(f"[train] no informative groups in {cfg.algorithm.max_generation_rounds} generation rounds; "
                        "drawing new prompts without an update")
                continue

            t1 = time.perf_counter()
            stats.update(train_step(cfg, algorithm, family, engine, ref_model, batch, global_tokens, global_seqs, world, padding))
            state.step += 1
            state.version += 1
            checkpoint_now = state.step % cfg.train.checkpoint_every == 0 or state.step >= total_steps
            # Under ZeRO-3 the weight gather is a collective over the whole model: once for the sync and the export.
            t2 = time.perf_counter()
            gathered = gathered_weights(engine, cfg) if syncs or checkpoint_now else None
            sync_bytes = push_policy(engine, cfg, rollouts, state.version, rank, group, gathered) if syncs else 0
            t_idle_from = time.perf_counter()
            t_sync = t_idle_from - t2 if syncs else 0.0
            t_train = t_idle_from - t1 - t_sync

            metrics = step_metrics(algorithm, state, stats, global_tokens, len(feed.skipped))
            metrics.update({"time/rollout_s": t_rollout, "time/train_s": t_train, "time/weight_sync_s": t_sync, "time/idle_s": t_idle,
                            "throughput/train_tokens_per_s": global_tokens / max(t_train, 1e-9)})
            if "response_tokens_mean" in metrics:
                metrics["throughput/rollout_tokens_per_s"] = metrics["response_tokens_mean"] * metrics["responses"] / max(t_rollout, 1e-9)
            if algorithm.needs_rollouts:  # 0 when colocated: the engine is the trained module itself
                metrics["weight_sync/bytes"] = sync_bytes
            if ready is not None:  # this worker group's first step: where the time to it went
                metrics.update(startup_metrics(loop_config["startup"], entered, ready, time.time()))
                ready = None
            if rank == 0:
                if metrics["step_skipped"] or metrics["passes_dropped"]:
                    say(f"[train] step {state.step}: " + (
                        f"skipped, NaN or infinite loss inputs on {metrics['step_skipped']} rank(s)" if metrics["step_skipped"]
                        else f"{metrics['passes_dropped']} micro-batch(es) with a NaN or infinite loss left out"))
                _show(log_metrics(out_dir, metrics), progress, gauges, trackers, bar)
            if checkpoint_now:  # only checkpoints go to Ray Train: each report waits for its controller's poll
                save_checkpoint(engine, family.processor, cfg, state, rank, feed, metrics, gathered)
    finally:
        if rank == 0:
            progress.close()
            trackers.close()


def _show(record: dict, progress: Progress, gauges: StepGauges, trackers: Trackers, bar: bool) -> None:
    """Rank 0: the step's record to Ray's metrics, the trackers and the console (a bar, or a line per step)."""
    gauges.record(record)
    trackers.log(record)
    progress.update(1, step_text(record, BAR_SHOWN if bar else SHOWN), always=True)
