"""What travels between the data pipeline, the rollout engines and the trainer: prompts, samples, training rows.

A `Prompt` is one processed prompt (its model family's chat-template tokens and pixels), a `Sample`
one sampled response, and a `TrainBatch` one rank's training rows. Collating rows into model inputs
is the model family's business (`raytrain.models.family.ModelFamily.collate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Prompt:
    """One processed prompt: chat-template tokens with vision placeholders expanded, plus its pixels."""

    key: str  # unique per (epoch, row): the unit of data-position bookkeeping
    id: str
    path: str
    label: str
    category: str
    input_ids: np.ndarray  # int64 [L]
    pixel_values: np.ndarray  # float32, the family's layout (Qwen2.5-VL: [patches, C*T*P*P]); empty without media
    grid_thw: np.ndarray  # int64 [3]: the family's patch grid of the media (Qwen2.5-VL), zeros where it has none
    is_video: bool
    second_per_grid_t: float = 1.0
    mode: str = "think"  # BusterX++ stage-3 mode flag (think / no_think), scored by the hybrid and thinking rewards
    explanation: str = ""  # reasoning an SFT target teaches (manifest `explanation`); empty: the config's template


@dataclass
class Sample:
    """One sampled response and what produced it."""

    token_ids: list[int]
    logprobs: list[float]  # under the sampling policy (temperature-scaled raw logits)
    text: str
    truncated: bool  # hit max_new_tokens without an end-of-sequence token
    version: int  # policy weight version that generated it
    extra: dict = field(default_factory=dict)


@dataclass
class Refusal:
    """What a rollout engine returns in place of a prompt's group when it cannot serve the prompt (its
    media exceed the engine's limits); the run goes on without it, counted as skipped media."""

    reason: str  # names the file


def response_positions(prompts: list[Prompt], responses: list[list[int]]) -> torch.Tensor:
    """[B, L] with 1 where a response token sits in the right-padded prompt+response rows (`prompts[i]`
    is the prompt of `responses[i]`: a group repeats its prompt G times)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    width = max(len(p.input_ids) + len(r) for p, r in zip(prompts, responses))
    mask = torch.zeros(len(prompts), width)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        mask[i, len(p.input_ids): len(p.input_ids) + len(r)] = 1
    return mask


Collate = Callable[[list[Prompt], list[list[int]]], dict[str, torch.Tensor]]


def consecutive_rows(n: int, size: int) -> list[list[int]]:
    """Rows 0..n-1 in order, `size` to a micro-batch (the last may hold fewer)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def token_budget_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Rows (indices into `lengths`, each a row's prompt + response tokens) packed into micro-batches whose
    padded tokens (rows x the longest row) stay within `max_tokens`: longest first, a micro-batch takes the
    next row while it fits, so rows of similar length share one; a row longer than the budget goes alone."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def padded_tokens(lengths: list[int], groups: list[list[int]]) -> int:
    """Tokens the passes over `groups` compute, padding included: each micro-batch is as wide as its longest row."""
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


@dataclass
class TrainBatch:
    """One rank's training sequences: prompt + response rows and per-token tensors [B, L] laid out as
    `response_positions` lays the rows out (`loss_mask`, and for RL `old_logprobs` and `advantages`).

    `micro_batches` collates at most `size` rows at a time (`collate_rows`: any grouping of the rows, such as
    `token_budget_rows`), so a step's forward and backward need only a micro-batch's activations and pixels;
    per-token tensors are cut to each micro-batch's rows and padded width (rows are right-padded, so
    positions do not move).
    """

    prompts: list[Prompt]
    responses: list[list[int]]
    per_token: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.prompts)

    def lengths(self) -> list[int]:
        """Each row's tokens: its prompt's (media placeholders included) and its response's."""
        return [len(p.input_ids) + len(r) for p, r in zip(self.prompts, self.responses)]

    def micro_batches(self, size: int, collate: Collate) -> list[dict[str, torch.Tensor]]:
        """`size` rows at a time, in order; `collate`: the model family's (`ModelFamily.collate`)."""
        return self.collate_rows(consecutive_rows(len(self), size), collate)

    def collate_rows(self, groups: list[list[int]], collate: Collate) -> list[dict[str, torch.Tensor]]:
        """One micro-batch per list of row indices (`consecutive_rows`, `token_budget_rows`), with the rows'
        per-token tensors cut to its width."""
        out = []
        for rows in groups:
            batch = collate([self.prompts[i] for i in rows], [self.responses[i] for i in rows])
            width = batch["input_ids"].shape[1]
            index = torch.tensor(rows)
            batch.update({k: v[index, :width] for k, v in self.per_token.items()})
            out.append(batch)
        return out
