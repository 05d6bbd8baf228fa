"""Advantage, policy-loss and KL functions of the DAPO/GRPO family (SPEC section 4).

Small pure torch functions in the style of verl's ``core_algos``:
- GRPO: Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300.
- DAPO: Yu et al. 2025, "DAPO: an open-source LLM RL system at scale", arXiv 2503.14476.
- Dr.GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783.
- PRPO: Nguyen et al. 2025, "PRPO: Paragraph-level Policy Optimization for Vision-Language
  Deepfake Detection" (SPEC section 5).
- GSPO: Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071.
- KL estimators k1/k2/k3: Schulman 2020, "Approximating KL divergence".

Advantage estimators and policy losses are registered by name
(`ADVANTAGE_ESTIMATORS`, `POLICY_LOSSES`); `algorithm.advantage_estimator` and
`algorithm.policy_loss` in the config pick one. The public functions take plain
tensors so they can be checked against the papers and other trainers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
KLKind = Literal["k1", "k2", "k3"]

# exp() of a log-ratio beyond this overflows or yields useless gradients;
# verl clamps at the same bound.
_MAX_LOG_RATIO = 20.0


def _groups(values: Tensor, group_size: int) -> Tensor:
    if group_size < 1 or values.numel() % group_size:
        raise ValueError(
            f"{values.numel()} values cannot be split into groups of group_size={group_size}"
        )
    return values.reshape(-1, group_size)


def _safe_div(numerator: Tensor, denominator: Tensor) -> Tensor:
    # An empty denominator only occurs with an all-zero numerator; dividing by
    # 1 then returns 0 while keeping the graph connected for backward().
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is nonzero; 0 when there are none."""
    keep = mask.bool()
    # where() rather than x * mask so inf/nan at padded positions cannot leak in.
    return _safe_div(torch.where(keep, x, 0).sum(), keep.sum().to(x.dtype))


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    eps: float = 1e-6,
    scale: Literal["std", "none"] = "std",
    unbiased: bool = True,
) -> Tensor:
    """Group-relative outcome advantages (GRPO, Shao et al. 2024; DAPO, Yu et al. 2025).

    ``rewards`` holds ``num_groups * group_size`` values, each group (the G
    responses of one prompt) contiguous. ``scale="std"`` gives
    A_i = (R_i - mean_g) / (std_g + eps) with the unbiased (Bessel-corrected)
    std, torch's default and what verl uses (``unbiased=False``: the population
    std, PRPO's convention); ``scale="none"`` is Dr.GRPO
    (Liu et al. 2025), which drops the division to remove the
    question-difficulty bias: A_i = R_i - mean_g. Both give exactly 0 to a group whose rewards are all equal.
    """
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group baseline, got {group_size}")
    grouped = _groups(rewards, group_size)
    if not grouped.is_floating_point():
        grouped = grouped.float()
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    # A constant group carries no signal, but its mean need not be representable (eight rewards of
    # 0.7 in float32): the centred rounding noise, divided by a std as small, gave every response ~0.06.
    centred = torch.where((grouped == grouped[:, :1]).all(dim=1, keepdim=True), 0.0, centred)
    if scale == "std":
        centred = centred / (grouped.std(dim=1, keepdim=True, unbiased=unbiased) + eps)
    return centred.reshape(rewards.shape)


def paragraph_advantages(
    paragraph_rewards: Tensor,
    paragraph_token_masks: Tensor,
    group_index: Tensor,
    *,
    outcome_rewards: Tensor | None = None,
    outcome_weight: float = 0.0,
    response_mask: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """PRPO paragraph-level advantages (Nguyen et al. 2025, SPEC section 5), per token ``[B, T]``.

    ``paragraph_rewards`` ``[B, K]``: r_k of paragraph k of response b.
    ``paragraph_token_masks`` ``[B, K, T]``: the tokens of each paragraph (disjoint); a
    paragraph without tokens is absent (padding), its reward ignored.
    ``group_index`` ``[B]``: the prompt each response answers.

    The rewards of all paragraphs of all responses of one prompt are pooled;
    A_k = (r_k - mean) / (std + eps) with the population std, and every token of
    paragraph k gets A_k; tokens outside any paragraph get 0.
    ``outcome_weight`` w (labelled data; 0 reproduces the label-free paper) mixes
    each response's outcome reward R into its paragraphs' rewards before pooling:
    r_k <- (1 - w) r_k + w R. With one paragraph per response and w = 1 this is GRPO
    (population std). A response without paragraphs falls back to its outcome (GRPO)
    advantage within its group on every token of ``response_mask``. A pool (or a fallback group) whose
    rewards are all equal gets exactly 0.
    """
    if not 0.0 <= outcome_weight <= 1.0:
        raise ValueError(f"outcome_weight must be in [0, 1], got {outcome_weight}")
    if paragraph_token_masks.dim() != 3 or paragraph_rewards.shape != paragraph_token_masks.shape[:2]:
        raise ValueError(f"paragraph_rewards {tuple(paragraph_rewards.shape)} must be the first two dims of "
                         f"paragraph_token_masks {tuple(paragraph_token_masks.shape)} ([B, K] and [B, K, T])")
    masks = paragraph_token_masks.bool()
    if (masks.sum(dim=1) > 1).any():
        raise ValueError("paragraph_token_masks overlap: a token belongs to at most one paragraph")
    present = masks.any(dim=-1)  # [B, K]
    has_paragraphs = present.any(dim=-1)  # [B]
    needs_outcome = outcome_weight > 0 or not bool(has_paragraphs.all())
    if needs_outcome and outcome_rewards is None:
        raise ValueError("outcome_rewards are needed for outcome_weight > 0 and for responses without paragraphs")
    if not bool(has_paragraphs.all()) and response_mask is None:
        raise ValueError("response_mask is needed for responses without paragraphs (outcome fallback)")
    rewards = paragraph_rewards.to(torch.float32)
    if outcome_weight > 0:
        rewards = (1 - outcome_weight) * rewards + outcome_weight * outcome_rewards.to(torch.float32).unsqueeze(-1)

    advantages = torch.zeros(masks.shape[0], masks.shape[2])
    for group in group_index.unique():
        rows = group_index == group
        pool = rewards[rows][present[rows]]
        if pool.numel():
            normalised = _standardise(rewards[rows], pool, eps) * present[rows]
            advantages[rows] = torch.einsum("bk,bkt->bt", normalised, masks[rows].to(normalised.dtype))
        fallback = rows & ~has_paragraphs
        if fallback.any():
            outcome = outcome_rewards[rows].to(torch.float32)
            normalised = _standardise(outcome, outcome, eps)
            advantages[fallback] = normalised[~has_paragraphs[rows]].unsqueeze(-1) * response_mask[fallback].to(torch.float32)
    return advantages


def _standardise(values: Tensor, pool: Tensor, eps: float) -> Tensor:
    """(values - mean(pool)) / (std(pool) + eps) with the population std; exactly 0 for a constant pool,
    whose mean need not be representable (eight rewards of 0.7 in float32 gave ~0.86 with eps 1e-8)."""
    if bool((pool == pool[0]).all()):
        return torch.zeros_like(values)
    return (values - pool.mean()) / (pool.std(unbiased=False) + eps)


def informative_groups(values: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025): True for groups whose values are not all equal.

    A group where every response scores the same has zero advantage and so
    contributes no gradient; DAPO drops it and samples more prompts.
    """
    grouped = _groups(values, group_size)
    return (grouped != grouped[:, :1]).any(dim=1)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    clip_ratio_c: float | None = None,
    loss_agg: LossAgg = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate policy loss with decoupled clip range (DAPO Clip-Higher).

    Tensors are ``[B, T]`` over response tokens; ``advantages`` may be ``[B]``
    (one per response, broadcast to its tokens) or ``[B, T]``. Per token,
    loss = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) with
    r = exp(logprobs - old_logprobs). ``clip_ratio_c`` (> 1) adds dual clip
    (Ye et al. 2019, arXiv 1912.09729; verl's ``clip_ratio_c``): for A < 0 the
    loss is capped at -c A so a huge ratio cannot blow up the update.

    ``loss_agg``:
    - ``"token-mean"``: sum over all response tokens / token count (DAPO
      token-level loss). ``num_tokens`` replaces the local count, so a
      data-parallel caller can normalise by the global batch's tokens; the
      caller then owns the rescaling for its gradient all-reduce (which
      averages over ranks, so pass global_tokens / world_size).
    - ``"seq-mean-token-mean"``: mean over responses of the per-response
      token mean (GRPO, Shao et al. 2024).
    - ``"seq-mean-token-sum"``: mean over responses of the per-response token
      sum (Dr.GRPO, Liu et al. 2025).
      In both seq-mean modes ``num_seqs`` replaces the local count of responses,
      as ``num_tokens`` does for tokens (pass global_seqs / world_size).
    With the global counts, a batch's loss is the sum of its parts' losses, so a
    caller may split a batch into micro-batches and accumulate their gradients.
    Responses without any unmasked token (padding rows, overlong-filtered
    responses) do not count in the seq-mean modes. An all-masked batch gives
    a zero loss that still backpropagates (zero gradients).

    Stats (floats over unmasked tokens): ``clip_frac`` (the clipped branch was
    the one taken), ``ratio_mean``, ``approx_kl`` (mean of old - new logprob).
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    if loss_agg not in get_args(LossAgg):
        raise ValueError(f"loss_agg must be one of {get_args(LossAgg)}, got {loss_agg!r}")
    if num_tokens is not None and loss_agg != "token-mean":
        raise ValueError(f"num_tokens only applies to loss_agg='token-mean', not {loss_agg!r}")
    if num_seqs is not None and loss_agg == "token-mean":
        raise ValueError("num_seqs only applies to the seq-mean loss_agg modes, not 'token-mean'")
    for name, value in (("num_tokens", num_tokens), ("num_seqs", num_seqs)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    keep = mask.bool()

    log_ratio = torch.clamp(logprobs - old_logprobs, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    token_loss = torch.maximum(unclipped, clipped)
    if clip_ratio_c is not None:
        token_loss = torch.where(
            advantages < 0, torch.minimum(token_loss, -advantages * clip_ratio_c), token_loss
        )
    token_loss = torch.where(keep, token_loss, 0)

    if loss_agg == "token-mean":
        count = keep.sum() if num_tokens is None else torch.tensor(num_tokens, device=keep.device)
        loss = _safe_div(token_loss.sum(), count.to(token_loss.dtype))
    else:
        seq_tokens = keep.sum(dim=-1).to(token_loss.dtype)
        seq_loss = token_loss.sum(dim=-1)
        if loss_agg == "seq-mean-token-mean":
            seq_loss = _safe_div(seq_loss, seq_tokens)
        count = (seq_tokens > 0).sum() if num_seqs is None else torch.tensor(num_seqs, device=keep.device)
        loss = _safe_div(seq_loss.sum(), count.to(token_loss.dtype))

    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), keep).item(),
            "ratio_mean": masked_mean(ratio, keep).item(),
            "approx_kl": masked_mean(-log_ratio, keep).item(),
        }
    return loss, stats


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind) -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from sampled-token logprobs (Schulman 2020).

    With d = logprobs - ref_logprobs: k1 = d (unbiased, high variance),
    k2 = d^2 / 2 (biased, low variance), k3 = exp(-d) + d - 1 (unbiased,
    low variance, always >= 0; the "low-variance KL" of GRPO, Shao et al. 2024).
    """
    diff = logprobs - ref_logprobs
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff.square()
    if kind == "k3":
        # Clamped like the policy ratio: exp(-d) overflows for tokens the
        # policy has all but abandoned.
        neg = torch.clamp(-diff, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(neg) - neg - 1.0
    raise ValueError(f"kind must be one of {get_args(KLKind)}, got {kind!r}")


# --- Registries: the names `algorithm.advantage_estimator` and `algorithm.policy_loss` choose from. ---
# Each entry reads its options from `algo`, the run's `AlgorithmConfig` (raytrain/config.py).


@dataclass
class AdvantageInputs:
    """What an advantage estimator may use. The G responses of a prompt are contiguous."""

    rewards: Tensor  # [B] outcome reward R of each response
    group_size: int
    response_mask: Tensor  # [B, T] response tokens
    paragraph_rewards: Tensor | None = None  # [B, K] PRPO paragraph rewards
    paragraph_token_masks: Tensor | None = None  # [B, K, T] PRPO paragraph tokens


ADVANTAGE_ESTIMATORS: dict[str, Callable[[AdvantageInputs, object], Tensor]] = {}
POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {}


def register_advantage_estimator(name: str):
    def add(fn):
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn
    return add


def register_policy_loss(name: str):
    def add(fn):
        POLICY_LOSSES[name] = fn
        return fn
    return add


@register_advantage_estimator("grpo")
def grpo_advantages(x: AdvantageInputs, algo) -> Tensor:
    """GRPO/DAPO (Shao et al. 2024; Yu et al. 2025): each response's group-normalised R on all its tokens."""
    return group_advantages(x.rewards, x.group_size).unsqueeze(-1) * x.response_mask


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(x: AdvantageInputs, algo) -> Tensor:
    """Dr.GRPO (Liu et al. 2025): R minus the group mean, unscaled, on all tokens."""
    return group_advantages(x.rewards, x.group_size, scale="none").unsqueeze(-1) * x.response_mask


@register_advantage_estimator("prpo")
def prpo_advantages(x: AdvantageInputs, algo) -> Tensor:
    """PRPO (Nguyen et al. 2025): `paragraph_advantages` with `algo.prpo_outcome_weight`."""
    if x.paragraph_rewards is None or x.paragraph_token_masks is None:
        raise ValueError("the prpo estimator needs paragraph rewards: set reward.weights.paragraph")
    group_index = torch.arange(x.rewards.numel()) // x.group_size
    return paragraph_advantages(
        x.paragraph_rewards, x.paragraph_token_masks, group_index, outcome_rewards=x.rewards,
        outcome_weight=algo.prpo_outcome_weight, response_mask=x.response_mask,
    )


@register_policy_loss("ppo_clip")
def ppo_clip_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, algo,
                  num_tokens: float | None = None, num_seqs: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """`policy_loss` with the run's clip range, dual clip and aggregation (DAPO, GRPO, Dr.GRPO);
    of the two counts, the one the aggregation divides by is used."""
    token_mean = algo.loss_agg == "token-mean"
    return policy_loss(
        logprobs, old_logprobs, advantages, mask, clip_low=algo.clip_low, clip_high=algo.clip_high,
        clip_ratio_c=algo.clip_ratio_c, loss_agg=algo.loss_agg,
        num_tokens=num_tokens if token_mean else None, num_seqs=None if token_mean else num_seqs,
    )


@register_policy_loss("gspo")
def gspo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, algo,
              num_tokens: float | None = None, num_seqs: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """GSPO-token (Zheng et al. 2025): the clipped objective on the sequence ratio.

    s_i = exp(mean_t (logp_it - old_it)) over the response's tokens replaces each token's
    ratio; as s_it = sg[s_i] * pi_it / sg[pi_it] its gradient flows through every token's
    own log-prob, so per-token advantages (PRPO) still apply. The paper clips at
    clip_low 3e-4 / clip_high 4e-4 and uses loss_agg seq-mean-token-mean.
    """
    keep = mask.bool()
    seq_log_ratio = _safe_div(torch.where(keep, logprobs - old_logprobs, 0).sum(-1), keep.sum(-1).to(logprobs.dtype))
    token_log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logprobs - logprobs.detach()
    return ppo_clip_loss(token_log_ratio, torch.zeros_like(old_logprobs), advantages, mask, algo, num_tokens, num_seqs)
