"""Supervised targets: what SFT teaches for a prompt, and the batch that teaches it."""

from __future__ import annotations

import hashlib

from raytrain.config import Config
from raytrain.data.batch import Prompt, TrainBatch, response_positions


def sft_target(prompt: Prompt, cfg: Config) -> str:
    """`<think>REASONING</think><answer>ANSWER</answer>`: the row's explanation (else `sft.think`), empty
    under `/no_think`; the true answer, or under `sft.answer: random` one drawn by the data key (so a
    resumed run teaches the same answers). Under `data.answer_format: heading` (DX-LLaVA) the reasoning's
    paragraphs, a blank line, then `### Answer: ANSWER`."""
    answer = prompt.label
    if cfg.sft.answer == "random":
        answer = ("real", "fake")[hashlib.sha1(f"{cfg.run.seed}:{prompt.key}".encode()).digest()[0] % 2]
    if cfg.data.answer_format == "heading":
        return f"{(prompt.explanation or cfg.sft.think).strip()}\n\n### Answer: {answer}"
    if cfg.data.answer_format == "letter":
        answer = "\\boxed{A}" if answer == "real" else "\\boxed{B}"
    think = "" if prompt.mode == "no_think" else (prompt.explanation or cfg.sft.think)
    return f"<think>{think}</think><answer>{answer}</answer>"


def sft_batch(cfg: Config, prompts: list[Prompt], tokenizer, end_id: int) -> TrainBatch | None:
    """Prompts with their `sft_target` tokens and the end-of-turn token `end_id` (the model family's);
    the loss covers the targets."""
    if not prompts:
        return None
    targets = [tokenizer(sft_target(p, cfg), add_special_tokens=False)["input_ids"] + [end_id] for p in prompts]
    return TrainBatch(prompts, targets, {"loss_mask": response_positions(prompts, targets)})
