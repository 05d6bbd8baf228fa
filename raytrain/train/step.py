"""One optimizer step under DeepSpeed: its config, a micro-batch's loss, and the micro-batched step
that keeps every ZeRO rank in step."""

from __future__ import annotations

import math

import deepspeed
import torch
import torch.distributed as dist

from raytrain.config import Config
from raytrain.config.deepspeed import deepspeed_config
from raytrain.config.sections import TrainConfig
from raytrain.data.batch import TrainBatch, consecutive_rows, padded_tokens, token_budget_rows
from raytrain.models.family import ModelFamily, head_bce
from raytrain.models.logprobs import policy_outputs, token_logprobs
from raytrain.train.algorithms import Algorithm

LOSS_INPUTS = ("old_logprobs", "advantages", "loss_mask")  # per-token tensors of a TrainBatch, not model inputs


def deepspeed_engine(cfg: Config, model):
    """The DeepSpeed engine over `model`'s trainable parameters: AdamW, or DeepSpeed's CPU Adam when
    `train.offload_optimizer` keeps the optimizer states in host memory (DeepSpeed steps them there)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.offload_optimizer == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # JIT-builds its C++ op on first use

        optimizer = DeepSpeedCPUAdam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg))
    return engine


def micro_batch_rows(train: TrainConfig, rows: int) -> int:
    """Sequences per pass: `train.micro_batch_size`, or `rows` split by `train.gradient_accumulation_steps`
    (ceil(rows / N): N passes when N divides the batch, fewer otherwise), or all `rows` in one pass."""
    if train.micro_batch_size:
        return train.micro_batch_size
    return max(1, math.ceil(rows / (train.gradient_accumulation_steps or 1)))


def micro_batch_groups(train: TrainConfig, lengths: list[int]) -> list[list[int]]:
    """The rows of each of the step's passes, given each row's tokens (`TrainBatch.lengths`): packed by
    `train.max_tokens_per_micro_batch` (`token_budget_rows`), else `micro_batch_rows` at a time in order."""
    if train.max_tokens_per_micro_batch:
        return token_budget_rows(lengths, train.max_tokens_per_micro_batch)
    return consecutive_rows(len(lengths), micro_batch_rows(train, len(lengths)))


def sum_across_ranks(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def micro_batch_loss(cfg: Config, algorithm: Algorithm, family: ModelFamily, engine, ref_model, batch: dict,
                     num_tokens: float, num_seqs: float) -> tuple[torch.Tensor, dict]:
    """One micro-batch's loss, normalised by the step's global counts per rank (`num_tokens`, `num_seqs`:
    global / world, as DeepSpeed averages gradients over ranks): the step's micro-batch losses sum to
    the loss of the whole global batch (DAPO's token-level mean, or the seq-mean modes)."""
    batch = {k: v.to(engine.device) for k, v in batch.items()}
    model_inputs = {k: v for k, v in batch.items() if k not in LOSS_INPUTS}
    temperature = algorithm.logprob_temperature(cfg)
    # Through the engine, not its module: DeepSpeed counts micro-batches in its forward, and ZeRO-3
    # accumulates a step's gradients only across the passes it counted.
    head = algorithm.trains_head and family.has_head
    logp, head_logits = policy_outputs(family, engine, model_inputs, temperature=temperature, head=head, responses_only=True)
    ref_logp = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logp = token_logprobs(family, ref_model, model_inputs, temperature=temperature, responses_only=True)
    loss, stats = algorithm.loss(cfg.algorithm, logp, ref_logp, batch, num_tokens, num_seqs)
    if head_logits is not None:
        # The binary head's BCE beside the LM loss (DX-LLaVA: LM + 10 x BCE), a mean over the step's rows.
        bce = head_bce(head_logits, batch["binary_labels"])
        loss = loss + cfg.model.head_loss_weight * bce / num_seqs
        correct = ((head_logits > 0).float() == batch["binary_labels"]).sum()
        stats.update({"head_bce_sum": float(bce.detach()), "head_correct_sum": float(correct),
                      "head_rows_sum": float(len(head_logits))})
    return loss, stats


def train_step(cfg: Config, algorithm: Algorithm, family: ModelFamily, engine, ref_model, batch: TrainBatch | None,
               global_tokens: float, global_seqs: float, world: int, padding: dict) -> dict:
    """Forward and backward in micro-batches (`micro_batch_groups`: `train.micro_batch_size` rows, the batch
    split into `train.gradient_accumulation_steps`, or rows packed by `train.max_tokens_per_micro_batch`),
    one optimizer step.

    ZeRO reduces gradients in every backward (and ZeRO-3 gathers parameters in every forward), so every
    rank runs as many passes as the rank with the most micro-batches: the others add passes over
    `padding` (`ModelFamily.padding_batch`) whose loss is zero.

    No NaN or infinity reaches the optimizer: a batch whose loss inputs (old log-probs, advantages, ...) are not
    finite on any rank skips the whole step on every rank (no pass, no optimizer step: `step_skipped`), and
    a micro-batch whose loss comes out non-finite all the same (the model's own numbers) backpropagates a
    zero padding pass instead (`passes_dropped`), as ZeRO needs every rank's backward.

    Returns the summed micro-batch losses (`loss`), whether this rank had rows (`ranks_trained`), the loss
    stats (`loss_sums` added up, `loss_means` weighted by each micro-batch's loss tokens), and the passes
    over real rows (`micro_batches`) with their tokens, without (`row_tokens`) and with padding
    (`padded_tokens`; the padding passes of other ranks' extra micro-batches are not counted)."""
    finite = batch is None or all(bool(torch.isfinite(t).all()) for t in batch.per_token.values())
    nonfinite = torch.tensor(float(not finite))
    dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
    if nonfinite:
        return {"loss": 0.0, "ranks_trained": 0.0, "loss_sums": {}, "loss_means": {}, "step_skipped": float(not finite),
                "passes_dropped": 0.0, "micro_batches": 0.0, "row_tokens": 0.0, "padded_tokens": 0.0}
    lengths = batch.lengths() if batch else []
    groups = micro_batch_groups(cfg.train, lengths)
    micro = batch.collate_rows(groups, family.collate) if batch else []
    count = torch.tensor(float(len(micro)))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    dropped = 0
    num_tokens, num_seqs = max(global_tokens, 1.0) / world, max(global_seqs, 1.0) / world
    loss_sum, sums, weighted, weights = 0.0, {}, {}, 0.0
    for i in range(int(count)):
        real = i < len(micro)
        loss, stats = micro_batch_loss(cfg, algorithm, family, engine, ref_model, micro[i] if real else padding,
                                       num_tokens, num_seqs)
        if real and not torch.isfinite(loss.detach()):
            dropped, real = dropped + 1, False
            loss, _ = micro_batch_loss(cfg, algorithm, family, engine, ref_model, padding, num_tokens, num_seqs)
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
    return {"loss": loss_sum, "ranks_trained": float(batch is not None), "loss_sums": sums,
            "loss_means": {k: v / max(weights, 1.0) for k, v in weighted.items()}, "step_skipped": 0.0,
            "passes_dropped": float(dropped), "micro_batches": float(len(micro)), "row_tokens": float(sum(lengths)),
            "padded_tokens": float(padded_tokens(lengths, groups))}
