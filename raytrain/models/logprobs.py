"""Log-probabilities of sampled tokens, computed the same way by the rollout engines and the trainer."""

from __future__ import annotations

import torch


def masked_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, temperature: float, suppress_ids: list[int]) -> torch.Tensor:
    """log-probabilities of `tokens` under softmax(logits / temperature) with `suppress_ids` removed:
    the distribution the rollout samples from, so trainer and engine compute the same numbers."""
    logits = logits.float() / temperature
    if not suppress_ids:
        return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logits[..., suppress_ids] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    # Suppressed tokens occur only inside prompts (vision placeholders), never in a response:
    # 0 there keeps -inf out of masked sums (0 * -inf is nan).
    return logp.masked_fill(torch.isin(tokens, torch.tensor(suppress_ids, device=tokens.device)), 0.0)


def token_logprobs(family, model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
                   responses_only: bool = False) -> torch.Tensor:
    """log pi(token_t | tokens_<t) for every position t >= 1 (position 0 gets 0), shape [B, L], with the
    family's vision special tokens suppressed. `family` (`raytrain.models.family.ModelFamily`) runs the
    forward: for Qwen2.5-VL, media through the vision tower in one call. `responses_only`: see `policy_outputs`."""
    return policy_outputs(family, model, batch, temperature=temperature, responses_only=responses_only)[0]


def first_response_position(response_mask: torch.Tensor) -> int:
    """The first position any row of a right-padded batch has a response token at (its length when none has)."""
    columns = response_mask.bool().any(0)
    return int(columns.int().argmax()) if bool(columns.any()) else response_mask.shape[1]


def policy_outputs(family, model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0, head: bool = False,
                   responses_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_logprobs` and, with `head` on a family with a binary head (DX-LLaVA), the head's [B] logits on
    the batch's head view, from the same forward pass (None otherwise).

    `responses_only` (the trainer, whose losses read response tokens alone): the LM head projects only the
    positions from the batch's first response token on (transformers' `logits_to_keep`, as TRL's trainers
    do), and earlier positions get 0. A media prompt is most of a row, and the [rows, positions, vocabulary]
    logits (152k words for Qwen2.5-VL) are the largest tensor of a step."""
    length = batch["input_ids"].shape[1]
    start = max(1, first_response_position(batch["response_mask"])) if responses_only else 1
    logits, head_logits = family.forward(model, batch, head=head, keep=length - start + 1)
    logp = masked_logprobs(logits[:, :-1], batch["input_ids"][:, start:], temperature=temperature,
                           suppress_ids=family.suppress_ids)
    return torch.nn.functional.pad(logp, (start, 0)), head_logits
