"""The thinking judge's prompt and the parsing of its score (SPEC section 3).

The reference judge, SophiaVL-R1-Thinking-Reward-Model-3B (Fan et al. 2025,
arXiv 2505.17018), reads the question, the media and the response and answers
``<answer>S</answer>`` with S in {0, 0.1, ..., 1.0}. The template below follows
the criteria of that paper; any vision-language judge can be given its own
template by config (placeholders ``{question}`` and ``{response}``).
"""

from __future__ import annotations

import math
import re

from rewards.answer import last_answer

JUDGE_PROMPT = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and a response to it. "
    "Judge the reasoning process, not whether the final answer is correct, and give a score between 0 and 1.\n"
    "### Evaluation criteria:\n"
    "- Logical soundness: does each step follow logically from the previous one?\n"
    "- Correct reasoning: are the observations and steps appropriate and valid?\n"
    "- Error identification: are there logical flaws, unsupported assumptions or incorrect steps?\n"
    "- Language consistency: is the reasoning written in one language, without mixing languages?\n"
    "- Redundancy: is the reasoning concise, without repetition or irrelevant steps?\n"
    "Give one score from {{0, 0.1, 0.2, ..., 1.0}}: 0 for completely flawed reasoning, 1 for perfectly sound "
    "reasoning. Enclose the score within <answer></answer> tags.\n"
    "Question: {question}\n"
    "Response: {response}"
)

_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)", re.ASCII)


def build_judge_prompt(question: str, response: str, template: str = JUDGE_PROMPT) -> str:
    """The judge's text prompt; the media go to the judge's processor beside it.

    ``str.format`` is applied to the template only, so braces inside the
    response or question are kept verbatim.
    """
    return template.format(question=question, response=response)


def parse_judge_score(text: str) -> float:
    """The number inside the judge's last ``<answer>`` tag, clamped to [0, 1]; 0.0 when unparsable."""
    content = last_answer(text)
    if content is None:
        return 0.0
    match = _NUMBER_RE.fullmatch(content.strip())
    if match is None:
        return 0.0
    value = float(match.group(0))
    return 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
