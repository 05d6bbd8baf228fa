"""Policy losses, KL estimators and the SFT token loss (SPEC section 4).

Small pure torch functions in the style of verl's ``core_algos``:
- DAPO (Clip-Higher, token-level loss): Yu et al. 2025, "DAPO: an open-source LLM RL system at scale",
  arXiv 2503.14476.
- GRPO: Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300.
- Dr.GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783.
- Dual clip: Ye et al. 2019, arXiv 1912.09729.
- GSPO: Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071.
- KL estimators k1/k2/k3: Schulman 2020, "Approximating KL divergence".

Policy losses are registered by name (`POLICY_LOSSES`); `algorithm.policy_loss` in the config picks
one. The public functions take plain tensors so they can be checked against the papers and other trainers.
A loss returns its stats as floats: keys ending in ``_sum`` are sums over the micro-batch's tokens,
the others means over them (raytrain/train/step.py adds or token-weights them accordingly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

from raytrain.algos.registry import registrar

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
KLKind = Literal["k1", "k2", "k3"]

# exp() of a log-ratio beyond this overflows or yields useless gradients;
# verl clamps at the same bound.
_MAX_LOG_RATIO = 20.0


def _safe_div(numerator: Tensor, denominator: Tensor) -> Tensor:
    # An empty denominator only occurs with an all-zero numerator; dividing by
    # 1 then returns 0 while keeping the graph connected for backward().
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is nonzero; 0 when there are none."""
    keep = mask.bool()
    # where() rather than x * mask so inf/nan at padded positions cannot leak in.
    return _safe_div(torch.where(keep, x, 0).sum(), keep.sum().to(x.dtype))


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = 0.28,
    clip_ratio_c: float | None = None,
    loss_agg: LossAgg = "token-mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate policy loss with decoupled clip range (DAPO Clip-Higher).

    Tensors are ``[B, T]`` over response tokens; ``advantages`` may be ``[B]``
    (one per response, broadcast to its tokens) or ``[B, T]``. Per token,
    loss = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) with
    r = exp(logprobs - old_logprobs); ``clip_high=None`` removes the upper clip
    (clip(r) = max(r, 1 - clip_low)). ``clip_ratio_c`` (> 1) adds dual clip
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
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, None if clip_high is None else 1.0 + clip_high)
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


def token_nll(logprobs: Tensor, mask: Tensor, num_tokens: float) -> tuple[Tensor, dict[str, float]]:
    """Supervised fine-tuning loss: the negative log-likelihood of the target tokens (``mask``), summed and
    divided by ``num_tokens`` (a data-parallel caller passes global_tokens / world_size, as for
    ``policy_loss``, so micro-batch losses add up to the global token mean).

    Stats: ``sft_nll_sum``, the summed NLL of this micro-batch's target tokens.
    """
    loss = -(logprobs * mask).sum() / num_tokens
    return loss, {"sft_nll_sum": float(-(logprobs.detach() * mask).sum())}


# --- The registry `algorithm.policy_loss` chooses from. ---
# Each entry reads its options from `algo`, the run's `AlgorithmConfig` (`raytrain.config.sections`).

POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {}


register_policy_loss = registrar(POLICY_LOSSES)


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
