"""The Ray Train worker loop: draw prompts, roll out, reward, update with DeepSpeed, sync weights.

Each data-parallel rank streams its own Ray Data shard and asks its rollout
actor for G samples per prompt and the reward actor for scores. DAPO keeps only
informative groups (dynamic sampling) until the rank has its quota, then every
rank takes one DeepSpeed step on the token-level clipped loss; rank 0 pushes
the new weights (or only the LoRA adapter) to every rollout actor, versioned.
The advantage estimator (GRPO, Dr.GRPO, PRPO) and the policy loss are looked up by
name in `raytrain.algos.advantages` and `raytrain.algos.losses`. The SFT algorithm shares everything but the rollout: the
targets are the rows' explanations or a template (`sft_target`).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import ray
import ray.train
import torch
import torch.distributed as dist

from actors.rollout import open_weight_group, push_weights
from raytrain.algos.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, informative_groups
from raytrain.algos.losses import POLICY_LOSSES, kl_penalty, token_nll
from raytrain.train.checkpoint import DEEPSPEED_TAG, MODEL_DIR, TrainerState
from raytrain.config import Config, parse_config
from raytrain.data.pipeline import prompts_from_batch
from raytrain.models.loading import export_weights, load_policy, load_processor, sync_state
from raytrain.algos.paragraph_tokens import paragraph_token_masks, token_char_spans
from raytrain.models.batching import (Prompt, Sample, TrainBatch, collate_ids, padding_batch, response_positions, token_logprobs,
                             vision_special_ids)
from raytrain.data.sft_targets import sft_batch
from raytrain.weight_sync.protocol import WeightGroup
from rewards.score import Score


@dataclass
class Group:
    prompt: Prompt
    samples: list[Sample]
    scores: list[Score]


class PromptFeed:
    """Prompts from this rank's shard, one at a time, skipping consumed keys and recording undecodable media."""

    def __init__(self, shard, batch_size: int, consumed: set[str]):
        self._batches = iter(shard.iter_batches(batch_size=batch_size, batch_format="numpy"))
        self._buffer: list[Prompt] = []
        self._consumed = consumed
        self.drawn: list[str] = []
        self.skipped: list[dict] = []
        self.exhausted = False

    def take(self, n: int) -> list[Prompt]:
        while len(self._buffer) < n and not self.exhausted:
            try:
                prompts, skipped = prompts_from_batch(next(self._batches))
            except StopIteration:
                self.exhausted = True
                break
            self.skipped += [s for s in skipped if s["key"] not in self._consumed]
            self.drawn += [s["key"] for s in skipped if s["key"] not in self._consumed]
            self._buffer += [p for p in prompts if p.key not in self._consumed]
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        self.drawn += [p.key for p in out]
        return out


def _deepspeed_config(cfg: Config) -> dict:
    zero = {"stage": cfg.train.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if cfg.train.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = cfg.train.zero3_param_persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        # A step is as many micro-batches as the data gives (`_train_step`): `engine.step()` is the boundary.
        "managed_gradient_accumulation": False,
        "steps_per_print": 1 << 30,
    }


def _weight_group(cfg: Config, rollouts: list) -> WeightGroup | None:
    """Rank 0's weight group with the engines when weights travel by broadcast (`rollout.weight_transport`)."""
    if not rollouts or cfg.weight_transport() != "broadcast":
        return None
    backend = "nccl" if cfg.train.use_gpu else "gloo"
    ranks = cfg.rollout.vllm.tensor_parallel_size if cfg.rollout.engine == "vllm" else 1
    group = open_weight_group(rollouts, backend, cfg.rollout.weight_group_timeout_s, ranks)
    print(f"[train] weight sync: {backend} broadcast to {len(rollouts)} rollout actor(s), {group.address.world_size} ranks", flush=True)
    return group


def _gathered_weights(engine, cfg: Config) -> dict[str, torch.Tensor] | None:
    """Under ZeRO-3, whose ranks each hold a shard of every parameter, the module's state dict gathered
    onto rank 0 a layer at a time (a collective: every rank calls this; only the adapter under LoRA).
    None otherwise: rank 0 reads its own whole module."""
    if cfg.train.zero_stage != 3:
        return None
    return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=cfg.model.lora.enabled)


def _push_weights(engine, cfg: Config, rollouts: list, version: int, rank: int, group: WeightGroup | None,
                  gathered: dict[str, torch.Tensor] | None) -> None:
    """Rank 0 sends the policy (the adapter alone under LoRA; `gathered`: `_gathered_weights`) in
    buckets; every rank waits for it."""
    if rank == 0:
        # A broadcast flattens each bucket from the live weights (on the GPU under NCCL: no host round trip).
        state = sync_state(engine.module, gathered, cpu_copy=group is None)
        push_weights(rollouts, state, version, cfg.rollout.weight_bucket_mb << 20, group)
    dist.barrier()


def _sum_across_ranks(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _collect_dapo(cfg: Config, feed: PromptFeed, rollout, reward_actor, version: int) -> tuple[list[Group], dict]:
    """DAPO dynamic sampling: draw prompts until `prompts_per_worker` informative groups or the round limit."""
    algo, want = cfg.algorithm, cfg.train.prompts_per_worker
    kept: list[Group] = []
    drawn = dropped = rounds = 0
    all_groups: list[Group] = []
    while len(kept) < want and rounds < algo.max_generation_rounds:
        prompts = feed.take(want - len(kept))
        if not prompts:
            break
        rounds += 1
        # Prompts go to the engine in calls of `rollout.prompts_per_call`, and each call's groups go to
        # the reward actor as soon as they exist: scoring (judge, encoder) runs while the rollout actor
        # generates the next call's prompts.
        per_call = cfg.rollout.prompts_per_call
        calls = [prompts[i:i + per_call] for i in range(0, len(prompts), per_call)]
        generated = [rollout.generate.remote(call, cfg.rollout.sampling) for call in calls]
        samples, scoring = [], []
        for call, ref in zip(calls, generated):
            for prompt, group in zip(call, ray.get(ref)):
                stale = max(version - s.version for s in group)
                if stale < 0:
                    raise RuntimeError(f"rollouts come from policy version {version - stale}, ahead of the trainer's {version}")
                if stale > algo.max_staleness:
                    raise RuntimeError(f"rollouts are {stale} versions behind the trainer (max_staleness={algo.max_staleness}); "
                                       "a restarted rollout actor serves its initial weights until training resumes "
                                       "from the last checkpoint and re-sends them")
                samples.append(group)
                scoring.append(_submit_scoring(cfg, reward_actor, prompt, group))
        scores = [sc for ref in scoring for sc in ray.get(ref)]
        g = cfg.rollout.sampling.group_size
        groups = [Group(p, samples[i], scores[i * g:(i + 1) * g]) for i, p in enumerate(prompts)]
        all_groups += groups
        drawn += len(groups)
        if algo.dynamic_sampling:
            metric = torch.tensor([sc.scalars()[algo.filter_metric] for sc in scores])
            informative = informative_groups(metric, g).tolist()
            dropped += informative.count(False)
            groups = [grp for grp, ok in zip(groups, informative) if ok]
        kept += groups
    stats = _rollout_stats(all_groups)
    # The policy version that generated this rank's rollouts (all equal while max_staleness is 0).
    stats["rollout_version"] = min((s.version for grp in all_groups for s in grp.samples), default=-1)
    stats.update({"groups_drawn": drawn, "groups_dropped": dropped, "groups_kept": len(kept), "generation_rounds": rounds})
    return kept, stats


def _submit_scoring(cfg: Config, reward_actor, prompt: Prompt, group: list[Sample]) -> ray.ObjectRef:
    n, media = len(group), ("video" if prompt.is_video else "image")
    return reward_actor.score.remote(
        [s.text for s in group], [len(s.token_ids) for s in group], [prompt.label] * n,
        modes=[prompt.mode] * n, media=[(prompt.path, media)] * n, questions=[cfg.data.prompt.format(media=media)] * n,
    )


def _rollout_stats(groups: list[Group]) -> dict:
    """Sums over every sampled response (kept or dropped): the policy's actual behaviour."""
    scores = [sc for grp in groups for sc in grp.scores]
    samples = [s for grp in groups for s in grp.samples]
    stats = {f"reward_{k}_sum": sum(sc.scalars()[k] for sc in scores) for k in (scores[0].scalars() if scores else ())}
    by_category: dict[str, list[float]] = {}
    for grp in groups:
        for sc in grp.scores:
            if "accuracy" in sc.components:
                tally = by_category.setdefault(grp.prompt.category, [0.0, 0.0])
                tally[0] += sc.components["accuracy"]
                tally[1] += 1
    stats["accuracy_by_category"] = by_category
    stats["responses"] = len(samples)
    stats["response_tokens_sum"] = sum(len(s.token_ids) for s in samples)
    stats["truncated_sum"] = sum(s.truncated for s in samples)
    return stats


def _dapo_batch(cfg: Config, groups: list[Group], tokenizer) -> TrainBatch | None:
    if not groups:
        return None
    samples = [s for grp in groups for s in grp.samples]
    prompts, responses = [grp.prompt for grp in groups for _ in grp.samples], [s.token_ids for s in samples]
    response_mask = response_positions(prompts, responses)
    old = torch.zeros_like(response_mask)
    mask = response_mask.clone()
    for i, s in enumerate(samples):
        old[i, response_mask[i].nonzero().squeeze(-1)] = torch.tensor(s.logprobs)
        if cfg.algorithm.overlong_filter and s.truncated:
            mask[i] = 0
    scores = [sc for grp in groups for sc in grp.scores]
    inputs = AdvantageInputs(torch.tensor([sc.total for sc in scores]), cfg.rollout.sampling.group_size, response_mask)
    if cfg.algorithm.name == "prpo":
        inputs.paragraph_rewards, inputs.paragraph_token_masks = _paragraph_tensors(samples, scores, response_mask, tokenizer)
    advantages = ADVANTAGE_ESTIMATORS["prpo" if cfg.algorithm.name == "prpo" else cfg.algorithm.advantage_estimator](inputs, cfg.algorithm)
    return TrainBatch(prompts, responses, {"old_logprobs": old, "advantages": advantages, "loss_mask": mask})


def _paragraph_tensors(samples: list[Sample], scores: list[Score], response_mask: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """PRPO inputs: paragraph rewards [B, K] and, through each sampled token's character span in the
    response text, the paragraphs' token masks [B, K, T] at the batch's response positions."""
    k = max(1, max(len(sc.paragraphs) for sc in scores))
    rewards = torch.zeros(len(samples), k)
    masks = torch.zeros(len(samples), k, response_mask.shape[1], dtype=torch.bool)
    for i, (sample, sc) in enumerate(zip(samples, scores)):
        if not sc.paragraphs:
            continue
        positions = response_mask[i].nonzero().squeeze(-1)
        token_masks = paragraph_token_masks([(p.start, p.end) for p in sc.paragraphs],
                                            token_char_spans(tokenizer, sample.token_ids))
        masks[i, : token_masks.shape[0], positions] = token_masks
        rewards[i, : token_masks.shape[0]] = torch.tensor([p.reward for p in sc.paragraphs])
    return rewards, masks


def _loss(cfg: Config, engine, ref_model, batch: dict, num_tokens: float, num_seqs: float,
          suppress: list[int]) -> tuple[torch.Tensor, dict]:
    """One micro-batch's loss, normalised by the step's global counts per rank (`num_tokens`, `num_seqs`:
    global / world, as DeepSpeed averages gradients over ranks): the step's micro-batch losses sum to
    the loss of the whole global batch (DAPO's token-level mean, or the seq-mean modes)."""
    batch = {k: v.to(engine.device) for k, v in batch.items()}
    model_inputs = {k: v for k, v in batch.items() if k not in ("old_logprobs", "advantages", "loss_mask")}
    temperature = cfg.rollout.sampling.temperature if cfg.algorithm.name != "sft" else 1.0
    # Through the engine, not its module: DeepSpeed counts micro-batches in its forward, and ZeRO-3
    # accumulates a step's gradients only across the passes it counted.
    logp = token_logprobs(engine, model_inputs, temperature=temperature, suppress_ids=suppress)
    mask = batch["loss_mask"]
    if cfg.algorithm.name == "sft":
        return token_nll(logp, mask, num_tokens)
    algo = cfg.algorithm
    loss, stats = POLICY_LOSSES[algo.policy_loss](logp, batch["old_logprobs"], batch["advantages"], mask, algo,
                                                  num_tokens, num_seqs)
    if algo.kl_coef > 0:
        with torch.no_grad():
            ref_logp = token_logprobs(ref_model, model_inputs, temperature=temperature, suppress_ids=suppress)
        kl = kl_penalty(logp, ref_logp, algo.kl_kind)
        kl_term = (kl * mask).sum() / num_tokens
        loss = loss + algo.kl_coef * kl_term
        stats["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1.0))  # this micro-batch's token mean
    return loss, stats


def _train_step(cfg: Config, engine, ref_model, batch: TrainBatch | None, tokenizer_ids: dict, global_tokens: float,
                global_seqs: float, world: int, suppress: list[int], padding: dict) -> dict:
    """Forward and backward in micro-batches of `train.micro_batch_size` rows, one optimizer step.

    ZeRO reduces gradients in every backward (and ZeRO-3 gathers parameters in every forward), so every
    rank runs as many passes as the rank with the most micro-batches: the others add passes over
    `padding` (`raytrain.models.batching.padding_batch`) whose loss is zero."""
    size = cfg.train.micro_batch_size or (len(batch) if batch else 1)
    micro = batch.micro_batches(size, **tokenizer_ids) if batch else []
    count = torch.tensor(float(len(micro)))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    num_tokens, num_seqs = max(global_tokens, 1.0) / world, max(global_seqs, 1.0) / world
    loss_sum, sums, weighted, weights = 0.0, {}, {}, 0.0
    for i in range(int(count)):
        real = i < len(micro)
        loss, stats = _loss(cfg, engine, ref_model, micro[i] if real else padding, num_tokens, num_seqs, suppress)
        if not real:
            loss, stats = loss * 0.0, {}
        engine.backward(loss)
        loss_sum += float(loss.detach())
        tokens = float(micro[i]["loss_mask"].sum()) if real else 0.0
        weights += tokens
        for k, v in stats.items():  # sums add up; means (clip_frac, kl, ...) are weighted by tokens
            if k.endswith("_sum"):
                sums[k] = sums.get(k, 0.0) + v
            else:
                weighted[k] = weighted.get(k, 0.0) + v * tokens
    engine.step()
    return {**sums, **{k: v / max(weights, 1.0) for k, v in weighted.items()}, "loss": loss_sum,
            "ranks_trained": float(batch is not None)}


def _save_checkpoint(engine, processor, cfg: Config, state: TrainerState, rank: int, directory: Path,
                     gathered: dict[str, torch.Tensor] | None) -> None:
    engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=cfg.model.lora.enabled)
    if rank == 0:
        export_weights(engine.module, processor, directory / MODEL_DIR, gathered)
        state.save(directory)


def train_loop_per_worker(loop_config: dict) -> None:
    cfg = parse_config(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.train.torch_threads)
    torch.manual_seed(cfg.run.seed + rank)

    rollouts, reward_actor = loop_config["rollout_actors"], loop_config["reward_actor"]
    processor = load_processor(cfg.model)
    tokenizer = processor.tokenizer
    tokenizer_ids = collate_ids(processor)

    suppress = vision_special_ids(processor)
    (padding,) = padding_batch(processor).micro_batches(1, **tokenizer_ids)
    model = load_policy(cfg.model)
    if rank == 0:
        trainable, total = sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())
        print(f"[train] trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)", flush=True)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=_deepspeed_config(cfg))
    ref_model = None
    if cfg.algorithm.name != "sft" and cfg.algorithm.kl_coef > 0:
        # The initial policy, frozen: only loaded when a KL term is on.
        frozen = cfg.model.model_copy(update={"lora": cfg.model.lora.model_copy(update={"enabled": False})})
        ref_model = load_policy(frozen).to(engine.device).eval().requires_grad_(False)

    group = _weight_group(cfg, rollouts) if rank == 0 else None
    state = TrainerState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DEEPSPEED_TAG, load_module_strict=not cfg.model.lora.enabled)
            state = TrainerState.load(d)
        if rank == 0:
            print(f"[train] resumed at step {state.step} (policy version {state.version}, {len(state.consumed)} prompts consumed)", flush=True)
    # After a restart the engines may serve another version: a later one (synced before the step's
    # checkpoint was recorded), their initial weights (a restarted rollout actor) or part of a sync
    # whose sender died. Rank 0 looks and every rank learns the answer, so all push or none.
    if rollouts:
        served = ray.get([a.served_version.remote() for a in rollouts]) if rank == 0 else []
        (behind,) = _sum_across_ranks([float(any(v != state.version for v in served))])
        if behind:
            _push_weights(engine, cfg, rollouts, state.version, rank, group, _gathered_weights(engine, cfg))

    feed = PromptFeed(ray.train.get_dataset_shard("train"), cfg.train.prompts_per_worker, set(state.consumed))
    rollout = rollouts[rank % len(rollouts)] if rollouts else None
    out_dir = Path(cfg.run.output_dir)
    engine.train()
    total_steps = cfg.train.total_steps or math.inf  # null: until the data runs out
    while state.step < total_steps:
        t0 = time.perf_counter()
        if cfg.algorithm.name != "sft":
            groups, stats = _collect_dapo(cfg, feed, rollout, reward_actor, state.version)
            batch = _dapo_batch(cfg, groups, tokenizer)
        else:
            prompts = feed.take(cfg.train.prompts_per_worker)
            batch, stats = sft_batch(cfg, prompts, tokenizer), {"prompts": len(prompts)}
        t_rollout = time.perf_counter() - t0
        mask = batch.per_token["loss_mask"] if batch is not None else torch.zeros(0, 0)
        global_tokens, global_rows, global_seqs, ranks_with_data = _sum_across_ranks(
            [float(mask.sum()), float(mask.shape[0]), float((mask.sum(-1) > 0).sum()), float(not feed.exhausted)]
        )
        if global_rows == 0 and ranks_with_data == 0:
            # Every rank has run out of data: record the final data position (skipped media
            # drawn in this last round included) and stop.
            _checkpoint(engine, processor, cfg, state, rank, feed, {"step": state.step, "data_exhausted": 1},
                        _gathered_weights(engine, cfg), "_end")
            break
        if global_rows == 0:
            if rank == 0:
                print(f"[train] no informative groups in {cfg.algorithm.max_generation_rounds} generation rounds; "
                      "drawing new prompts without an update", flush=True)
            continue

        t1 = time.perf_counter()
        stats.update(_train_step(cfg, engine, ref_model, batch, tokenizer_ids, global_tokens, global_seqs, world, suppress, padding))
        state.step += 1
        state.version += 1
        sync = cfg.algorithm.name != "sft"
        checkpoint_now = state.step % cfg.train.checkpoint_every == 0 or state.step >= total_steps
        # Under ZeRO-3 the weight gather is a collective over the whole model: once for the sync and the export.
        t2 = time.perf_counter()
        gathered = _gathered_weights(engine, cfg) if sync or checkpoint_now else None
        if sync:
            _push_weights(engine, cfg, rollouts, state.version, rank, group, gathered)
        t_sync = time.perf_counter() - t2 if sync else 0.0
        t_train = time.perf_counter() - t1 - t_sync

        metrics = _step_metrics(cfg, state, stats, global_tokens, feed)
        metrics.update({"time/rollout_s": t_rollout, "time/train_s": t_train, "time/weight_sync_s": t_sync})
        if rank == 0:
            _log(out_dir, metrics)
        if checkpoint_now:
            _checkpoint(engine, processor, cfg, state, rank, feed, metrics, gathered)
        else:
            ray.train.report(metrics)


def _checkpoint(engine, processor, cfg: Config, state: TrainerState, rank: int, feed: PromptFeed, metrics: dict,
                gathered: dict[str, torch.Tensor] | None, name: str = "") -> None:
    _gather_data_position(state, feed)
    with tempfile.TemporaryDirectory() as tmp:
        _save_checkpoint(engine, processor, cfg, state, rank, Path(tmp), gathered)
        # One name on every rank: Ray Train merges the ranks' files (DeepSpeed's per-rank
        # optimizer shards) into that one directory.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{state.step:06d}{name}")


def _gather_data_position(state: TrainerState, feed: PromptFeed) -> None:
    """Every rank's drawn keys and skipped media, merged into the state rank 0 saves."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (feed.drawn, feed.skipped))
    consumed = set(state.consumed)
    seen_skips = {s["key"] for s in state.skipped}
    for drawn, skipped in gathered:
        consumed.update(drawn)
        state.skipped += [s for s in skipped if s["key"] not in seen_skips and not seen_skips.add(s["key"])]
    state.consumed = sorted(consumed)


def _metric_keys(cfg: Config) -> list[str]:
    """Per-rank sums every rank reduces, in one fixed order (a rank with no data sends zeros)."""
    if cfg.algorithm.name == "sft":
        return ["prompts", "sft_nll_sum"]
    scored = [c for c in cfg.reward.weights if c != "paragraph" or cfg.reward.enabled("paragraph")]
    judge = ["judge_asked", "judge_failed"] if cfg.reward.enabled("thinking") else []
    rewards = [f"reward_{c}_sum" for c in [*scored, "total", *judge]]
    kl = ["kl"] if cfg.algorithm.kl_coef > 0 else []
    return ["responses", "response_tokens_sum", "truncated_sum", "groups_drawn", "groups_dropped", "groups_kept",
            "generation_rounds", *rewards, "clip_frac", "ratio_mean", "approx_kl", *kl, "ranks_trained"]


def _step_metrics(cfg: Config, state: TrainerState, stats: dict, global_tokens: float, feed: PromptFeed) -> dict:
    """Global metrics of one step from every rank's sums."""
    keys = _metric_keys(cfg) + ["media_skipped", "loss"]
    totals = dict(zip(keys, _sum_across_ranks([float(stats.get(k, 0.0)) for k in keys[:-2]] + [float(len(feed.skipped)), stats["loss"]])))
    m = {"step": state.step, "policy_version": state.version, "tokens": global_tokens, "media_skipped": int(totals["media_skipped"])}
    if "rollout_version" in stats:
        m["rollout_version"] = stats["rollout_version"]  # this rank's; every rank checked staleness itself
    ranks = max(totals.get("ranks_trained", 1.0), 1.0)
    m["loss"] = totals["loss"] / ranks
    responses = max(totals.get("responses", 0.0), 1.0)
    for k, v in totals.items():
        if k.startswith("reward_"):
            m["reward/" + k[len("reward_"):-len("_sum")]] = v / responses
        elif k in ("response_tokens_sum", "truncated_sum"):
            m[k[:-len("_sum")] + "_mean"] = v / responses
        elif k in ("clip_frac", "ratio_mean", "approx_kl", "kl"):
            m[k] = v / ranks
        elif k in ("groups_drawn", "groups_dropped", "groups_kept", "generation_rounds", "prompts", "responses"):
            m[k] = int(v)
    if "sft_nll_sum" in totals:
        m["sft_nll"] = totals["sft_nll_sum"] / max(global_tokens, 1.0)
    if cfg.algorithm.name != "sft":
        m.update(_accuracy_by_category(stats.get("accuracy_by_category", {})))
    return m


def _accuracy_by_category(local: dict[str, list[float]]) -> dict[str, float]:
    """`reward/accuracy/<category>` over every rank's responses (ranks see different categories)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    merged: dict[str, list[float]] = {}
    for part in gathered:
        for category, (correct, count) in part.items():
            tally = merged.setdefault(category, [0.0, 0.0])
            tally[0] += correct
            tally[1] += count
    return {f"reward/accuracy/{c}": correct / count for c, (correct, count) in sorted(merged.items()) if count}


def _log(out_dir: Path, metrics: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}) + "\n")
    shown = {k: metrics[k] for k in ("loss", "reward/total", "reward/accuracy", "reward/format", "groups_kept", "groups_dropped", "sft_nll") if k in metrics}
    text = " | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    print(f"[train] step {metrics['step']} | {text} | {metrics['time/rollout_s'] + metrics['time/train_s']:.1f}s", flush=True)
