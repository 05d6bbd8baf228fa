"""One optimizer step under DeepSpeed: its config, a micro-batch's loss, and the micro-batched step
that keeps every ZeRO rank in step."""

from __future__ import annotations

import torch
import torch.distributed as dist

from raytrain.config import Config
from raytrain.data.batch import TrainBatch
from raytrain.models.family import ModelFamily, head_bce
from raytrain.models.logprobs import policy_outputs, token_logprobs
from raytrain.train.algorithms import Algorithm

LOSS_INPUTS = ("old_logprobs", "advantages", "loss_mask")  # per-token tensors of a TrainBatch, not model inputs


def deepspeed_config(cfg: Config) -> dict:
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
        # A step is as many micro-batches as the data gives (`train_step`): `engine.step()` is the boundary.
        "managed_gradient_accumulation": False,
        "steps_per_print": 1 << 30,
    }


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
    logp, head_logits = policy_outputs(family, engine, model_inputs, temperature=temperature, head=head)
    ref_logp = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logp = token_logprobs(family, ref_model, model_inputs, temperature=temperature)
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
    """Forward and backward in micro-batches of `train.micro_batch_size` rows, one optimizer step.

    ZeRO reduces gradients in every backward (and ZeRO-3 gathers parameters in every forward), so every
    rank runs as many passes as the rank with the most micro-batches: the others add passes over
    `padding` (`ModelFamily.padding_batch`) whose loss is zero.

    Returns the summed micro-batch losses (`loss`), whether this rank had rows (`ranks_trained`), and the
    loss stats: `loss_sums` added up, `loss_means` weighted by each micro-batch's loss tokens."""
    size = cfg.train.micro_batch_size or (len(batch) if batch else 1)
    micro = batch.micro_batches(size, family.collate) if batch else []
    count = torch.tensor(float(len(micro)))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    num_tokens, num_seqs = max(global_tokens, 1.0) / world, max(global_seqs, 1.0) / world
    loss_sum, sums, weighted, weights = 0.0, {}, {}, 0.0
    for i in range(int(count)):
        real = i < len(micro)
        loss, stats = micro_batch_loss(cfg, algorithm, family, engine, ref_model, micro[i] if real else padding,
                                       num_tokens, num_seqs)
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
            "loss_means": {k: v / max(weights, 1.0) for k, v in weighted.items()}}
