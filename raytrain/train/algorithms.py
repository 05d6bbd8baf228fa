"""Training algorithms, registered by name: `algorithm.name` picks one (SPEC sections 4 to 6).

An algorithm is what differs between DAPO, PRPO and SFT in a step: whether it needs rollouts (rollout
and reward actors, a weight sync after every step), how it collects a rank's batch, the temperature of
the trainer's log-probs, whether a frozen KL reference is loaded, a micro-batch's loss, and the step's
metrics it reports. The worker loop (`raytrain.train.loop`) does everything else the same way for all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from raytrain.algos.losses import POLICY_LOSSES, kl_penalty, token_nll
from raytrain.config import Config
from raytrain.config.sections import AlgorithmConfig
from raytrain.data.batch import TrainBatch
from raytrain.models.family import ModelFamily
from raytrain.train.experience import (
    Group,
    PromptFeed,
    RolloutsAhead,
    collect_rollouts,
    rl_batch,
    rollout_metrics,
    supervised_batch,
)

ALGORITHMS: dict[str, Algorithm] = {}


def register_algorithm(name: str):
    def add(cls):
        ALGORITHMS[name] = cls()
        return cls
    return add


class Algorithm(ABC):
    """The decisions of one training algorithm; instances are stateless, one per name in `ALGORITHMS`."""

    needs_rollouts: bool  # rollout and reward actors, and a weight sync to them after every step
    trains_head: bool = False  # a family's binary head (DX-LLaVA) trains too, on its BCE (`model.head_loss_weight`)

    @abstractmethod
    def uses_reference(self, algo: AlgorithmConfig) -> bool:
        """Whether the frozen initial policy is loaded, for a KL term."""

    @abstractmethod
    def logprob_temperature(self, cfg: Config) -> float:
        """The temperature of the trainer's token log-probs."""

    @abstractmethod
    def collect(self, cfg: Config, feed: PromptFeed, rollout, reward_actor, version: int,
                family: ModelFamily, ahead: RolloutsAhead | None = None) -> tuple[TrainBatch | None, dict]:
        """This rank's batch for the step (None: no rows) and its stats, which every rank sums by key.
        `ahead`: rollouts submitted steps ahead (`rollout.mode: async`)."""

    @abstractmethod
    def loss(self, algo: AlgorithmConfig, logp: Tensor, ref_logp: Tensor | None, batch: dict[str, Tensor],
             num_tokens: float, num_seqs: float) -> tuple[Tensor, dict[str, float]]:
        """A micro-batch's loss from the policy's token log-probs (and the reference's, when loaded), normalised
        by the step's global counts per rank; its stats end in `_sum` (sums) or are token means."""

    @abstractmethod
    def report(self, totals: dict, global_tokens: float) -> dict:
        """The step's metrics of this algorithm from every rank's stats (`collect`, `train_step`) summed by key."""


@register_algorithm("dapo")
class DAPO(Algorithm):
    """DAPO (Yu et al. 2025) and, by its options, GRPO and Dr.GRPO: rollouts with dynamic sampling, the
    outcome advantages of `algorithm.advantage_estimator`, `algorithm.policy_loss` and an optional KL term."""

    needs_rollouts = True

    def uses_reference(self, algo):
        return algo.kl_coef > 0

    def logprob_temperature(self, cfg):
        # The distribution the rollout sampled from, so the ratio to its log-probs starts at 1.
        return cfg.rollout.sampling.temperature

    def collect(self, cfg, feed, rollout, reward_actor, version, family, ahead=None):
        groups, stats = collect_rollouts(cfg, feed, rollout, reward_actor, version, ahead)
        return self.batch(cfg, groups, family.tokenizer), stats

    def batch(self, cfg: Config, groups: list[Group], tokenizer) -> TrainBatch | None:
        return rl_batch(cfg, groups, tokenizer, estimator=cfg.algorithm.advantage_estimator, paragraphs=False)

    def loss(self, algo, logp, ref_logp, batch, num_tokens, num_seqs):
        mask = batch["loss_mask"]
        loss, stats = POLICY_LOSSES[algo.policy_loss](logp, batch["old_logprobs"], batch["advantages"], mask, algo,
                                                      num_tokens, num_seqs)
        if algo.kl_coef > 0:
            kl = kl_penalty(logp, ref_logp, algo.kl_kind)
            kl_term = (kl * mask).sum() / num_tokens
            loss = loss + algo.kl_coef * kl_term
            stats["kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1.0))  # this micro-batch's token mean
        return loss, stats

    def report(self, totals, global_tokens):
        ranks = max(totals["ranks_trained"], 1.0)
        # The loss stats (clip_frac, ratio_mean, approx_kl, kl) are each rank's token means: averaged over ranks.
        return {"loss": totals["loss"] / ranks, **rollout_metrics(totals),
                **{k: v / ranks for k, v in totals["loss_means"].items()}}


@register_algorithm("prpo")
class PRPO(DAPO):
    """PRPO (Nguyen et al. 2025): DAPO's rollouts and loss with per-paragraph advantages (the `prpo` estimator)."""

    def batch(self, cfg, groups, tokenizer):
        return rl_batch(cfg, groups, tokenizer, estimator="prpo", paragraphs=True)


@register_algorithm("sft")
class SFT(Algorithm):
    """Supervised fine-tuning on the rows' targets (`raytrain.data.sft_targets`): the token NLL, no rollouts."""

    needs_rollouts = False
    trains_head = True  # DX-LLaVA's SFT: LM loss + head_loss_weight x BCE (the official dual loss)

    def uses_reference(self, algo):
        return False

    def logprob_temperature(self, cfg):
        return 1.0  # the model's own distribution

    def collect(self, cfg, feed, rollout, reward_actor, version, family, ahead=None):
        return supervised_batch(cfg, feed, family.tokenizer, family.end_id)

    def loss(self, algo, logp, ref_logp, batch, num_tokens, num_seqs):
        return token_nll(logp, batch["loss_mask"], num_tokens)

    def report(self, totals, global_tokens):
        # `loss` is the sum of the ranks' losses, as SFT has always logged it (the world size times
        # `sft_nll` when every rank trains); `sft_nll` is the step's mean over all target tokens.
        sums = totals["loss_sums"]
        metrics = {"loss": totals["loss"], "prompts": int(totals["prompts"])}
        if "sft_nll_sum" in sums:  # not in a step skipped for non-finite inputs
            metrics["sft_nll"] = sums["sft_nll_sum"] / max(global_tokens, 1.0)
        if "head_rows_sum" in sums:  # a family with a binary head: its BCE and training accuracy
            rows = max(sums["head_rows_sum"], 1.0)
            metrics.update({"head_bce": sums["head_bce_sum"] / rows, "head_accuracy": sums["head_correct_sum"] / rows})
        return metrics
