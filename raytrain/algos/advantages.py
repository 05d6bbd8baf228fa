"""Advantage estimators of the DAPO/GRPO family and PRPO, and DAPO's dynamic-sampling filter (SPEC sections 4 and 5).

Small pure torch functions in the style of verl's ``core_algos``:
- GRPO: Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300.
- DAPO: Yu et al. 2025, "DAPO: an open-source LLM RL system at scale", arXiv 2503.14476.
- Dr.GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv 2503.20783.
- PRPO: Nguyen et al. 2025, "PRPO: Paragraph-level Policy Optimization for Vision-Language
  Deepfake Detection" (SPEC section 5).

Estimators are registered by name (`ADVANTAGE_ESTIMATORS`): `algorithm.advantage_estimator` picks
DAPO's, `algorithm.name: prpo` uses `prpo` (raytrain/train/algorithms.py). The public functions take
plain tensors so they can be checked against the papers and other trainers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from raytrain.algos.registry import registrar


def _groups(values: Tensor, group_size: int) -> Tensor:
    if group_size < 1 or values.numel() % group_size:
        raise ValueError(
            f"{values.numel()} values cannot be split into groups of group_size={group_size}"
        )
    return values.reshape(-1, group_size)


def _constant_rows(grouped: Tensor) -> Tensor:
    """[N] True where every value of a row equals its first (a NaN row is not constant)."""
    return (grouped == grouped[:, :1]).all(dim=1)


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
    centred = torch.where(_constant_rows(grouped).unsqueeze(1), 0.0, centred)
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
    if bool(_constant_rows(pool.unsqueeze(0))):
        return torch.zeros_like(values)
    return (values - pool.mean()) / (pool.std(unbiased=False) + eps)


def informative_groups(values: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025): True for groups whose values are not all equal.

    A group where every response scores the same has zero advantage and so
    contributes no gradient; DAPO drops it and samples more prompts.
    """
    return ~_constant_rows(_groups(values, group_size))


# --- The registry `algorithm.advantage_estimator` (and `algorithm.name: prpo`) chooses from. ---
# Each entry reads its options from `algo`, the run's `AlgorithmConfig` (`raytrain.config.sections`).


@dataclass
class AdvantageInputs:
    """What an advantage estimator may use. The G responses of a prompt are contiguous."""

    rewards: Tensor  # [B] outcome reward R of each response
    group_size: int
    response_mask: Tensor  # [B, T] response tokens
    paragraph_rewards: Tensor | None = None  # [B, K] PRPO paragraph rewards
    paragraph_token_masks: Tensor | None = None  # [B, K, T] PRPO paragraph tokens


ADVANTAGE_ESTIMATORS: dict[str, Callable[[AdvantageInputs, object], Tensor]] = {}


register_advantage_estimator = registrar(ADVANTAGE_ESTIMATORS)


@register_advantage_estimator("grpo")
def grpo_advantages(x: AdvantageInputs, algo) -> Tensor:
    """GRPO/DAPO (Shao et al. 2024; Yu et al. 2025): each response's group-normalised R on all its tokens."""
    return group_advantages(x.rewards, x.group_size).unsqueeze(-1) * x.response_mask


@register_advantage_estimator("dr_grpo")
def dr_grpo_advantages(x: AdvantageInputs, algo) -> Tensor:
    """Dr.GRPO (Liu et al. 2025): R minus the group mean, unscaled, on all tokens."""
    return group_advantages(x.rewards, x.group_size, scale="none").unsqueeze(-1) * x.response_mask


def response_paragraph_advantages(
    paragraph_rewards: Tensor,
    paragraph_token_masks: Tensor,
    group_size: int,
    *,
    outcome_rewards: Tensor | None = None,
    outcome_weight: float = 0.0,
    response_mask: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """PRPO advantages with each response's paragraphs as their own pool, per token ``[B, T]``: the
    official PRPO code's grouping (a verl fork with ``rollout.n = 1``, where the group is the paragraphs of
    one response; label-free).

    Shapes as `paragraph_advantages`. A_k = (r_k - mean_b) / (std_b + eps) over the paragraphs of
    response b (population std); tokens outside any paragraph get 0. Mixing R into the rewards would
    cancel in a one-response pool, so ``outcome_weight`` w mixes advantages instead:
    A_k <- (1 - w) A_k + w A_b, with A_b the response's outcome advantage among the ``group_size``
    contiguous responses of its prompt (`group_advantages`, population std; 0 for a group of one).
    A response without paragraphs gets A_b on every token of ``response_mask``, as under `prompt` grouping.
    """
    if not 0.0 <= outcome_weight <= 1.0:
        raise ValueError(f"outcome_weight must be in [0, 1], got {outcome_weight}")
    if outcome_weight > 0 and outcome_rewards is None:
        raise ValueError("outcome_rewards are needed for outcome_weight > 0")
    # Every response its own pool (which also checks the shapes and the fallback's inputs); the outcome
    # fallback is redone below among the prompt's responses.
    own = torch.arange(paragraph_rewards.shape[0])
    paragraph = paragraph_advantages(paragraph_rewards, paragraph_token_masks, own, outcome_rewards=outcome_rewards,
                                     response_mask=response_mask, eps=eps)
    has_paragraphs = paragraph_token_masks.bool().any(dim=-1).any(dim=-1)
    if outcome_weight == 0 and bool(has_paragraphs.all()):
        return paragraph
    outcome = (group_advantages(outcome_rewards, group_size, eps=eps, unbiased=False) if group_size > 1
               else torch.zeros(outcome_rewards.shape)).to(torch.float32)
    in_paragraph = paragraph_token_masks.bool().any(dim=1).to(torch.float32)  # [B, T]
    advantages = (1 - outcome_weight) * paragraph + outcome_weight * outcome.unsqueeze(-1) * in_paragraph
    fallback = ~has_paragraphs
    advantages[fallback] = outcome[fallback].unsqueeze(-1) * response_mask[fallback].to(torch.float32)
    return advantages


@register_advantage_estimator("prpo")
def prpo_advantages(x: AdvantageInputs, algo) -> Tensor:
    """PRPO (Nguyen et al. 2025) with `algo.prpo_outcome_weight`: `algo.prpo_group_by` `prompt` pools the
    paragraphs of a prompt's G responses (`paragraph_advantages`), `response` each response's own
    (`response_paragraph_advantages`, the official code's)."""
    if x.paragraph_rewards is None or x.paragraph_token_masks is None:
        raise ValueError("the prpo estimator needs paragraph rewards: set reward.weights.paragraph")
    if algo.prpo_group_by == "response":
        return response_paragraph_advantages(
            x.paragraph_rewards, x.paragraph_token_masks, x.group_size, outcome_rewards=x.rewards,
            outcome_weight=algo.prpo_outcome_weight, response_mask=x.response_mask,
        )
    group_index = torch.arange(x.rewards.numel()) // x.group_size
    return paragraph_advantages(
        x.paragraph_rewards, x.paragraph_token_masks, group_index, outcome_rewards=x.rewards,
        outcome_weight=algo.prpo_outcome_weight, response_mask=x.response_mask,
    )
