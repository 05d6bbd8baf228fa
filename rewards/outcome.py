"""Outcome rewards of a whole response (SPEC section 3).

Format and accuracy follow BusterX++ (Wen et al. 2025); the overlong term
is DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, section 3.4).
"""

from __future__ import annotations

from collections.abc import Mapping

from rewards.answer import HEADING_ANSWER_RE, AnswerFormat, heading_answer, parse_answer
from rewards.modes import hybrid_reward, thinking_reward
from rewards.score import Score

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_ANSWER_OPEN, _ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)
# Scalar components summed into the total; "paragraph" (PRPO) is a per-paragraph vector scored apart.
SCALAR_COMPONENTS = ("format", "overlong", "accuracy", "hybrid", "thinking")
COMPONENTS = (*SCALAR_COMPONENTS, "paragraph")


def format_reward(text: str, answer_format: AnswerFormat = "word") -> float:
    """0.0 for exactly one ``<think>...</think><answer>...</answer>``, only whitespace around, else -1.0.

    Requiring each tag exactly once both rejects duplicates and keeps tags
    out of the think/answer content, and the check stays linear in the text.
    Under the ``heading`` answer format (DX-LLaVA) the form is reasoning, then exactly one
    ``### Answer: real|fake`` as the end of the response (`heading_format_ok`).
    """
    if answer_format == "heading":
        return 0.0 if heading_format_ok(text) else -1.0
    body = text.strip()
    if any(body.count(tag) != 1 for tag in _TAGS):
        return -1.0
    think_end = body.find(_THINK_CLOSE) + len(_THINK_CLOSE)
    answer_start = body.find(_ANSWER_OPEN)
    well_formed = (
        body.startswith(_THINK_OPEN)
        and body.endswith(_ANSWER_CLOSE)
        and think_end <= answer_start
        and not body[think_end:answer_start].strip()
    )
    return 0.0 if well_formed else -1.0


def heading_format_ok(text: str) -> bool:
    """Reasoning (any non-blank text) followed by exactly one ``### Answer: real|fake``, which ends the response."""
    matches = list(HEADING_ANSWER_RE.finditer(text))
    if len(matches) != 1 or heading_answer(text) is None:
        return False
    answer = matches[0]
    return bool(text[:answer.start()].strip()) and not text[answer.end():].strip()


def accuracy_reward(text: str, label: str, answer_format: AnswerFormat = "word") -> float:
    """1.0 when the parsed answer equals ``label`` (case-insensitive), else 0.0 (unparsable included)."""
    return 1.0 if parse_answer(text, answer_format) == label.lower() else 0.0


def overlong_reward(num_tokens: int, max_len: int = 750, buffer: int = 150) -> float:
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv 2503.14476).

    With L_max = ``max_len`` and L_cache = ``buffer``: 0 up to
    ``max_len - buffer`` tokens, then a linear ramp down to -1 at
    ``max_len``, and -1 beyond it.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"buffer must satisfy 0 < buffer <= max_len={max_len}, got buffer={buffer}")
    threshold = max_len - buffer
    if num_tokens <= threshold:
        return 0.0
    if num_tokens <= max_len:
        return (threshold - num_tokens) / buffer
    return -1.0


def score_response(
    text: str,
    num_tokens: int,
    label: str,
    weights: Mapping[str, float],
    *,
    max_len: int,
    buffer: int,
    answer_format: AnswerFormat,
    mode: str = "think",
    judge_score: float | None = None,
) -> Score:
    """Score every scalar component named in ``weights`` and their weighted sum, the total (SPEC section 3).

    ``mode`` is the prompt's ``think``/``no_think`` flag; ``judge_score`` the judge's grade of the
    reasoning (None when not asked or failed). Components are returned separately so each can be
    logged on its own; ``"paragraph"`` is accepted but scored by ``rewards.paragraphs``.
    """
    unknown = sorted(set(weights) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown reward components {unknown}; known: {list(COMPONENTS)}")
    compute = {
        "format": lambda: format_reward(text, answer_format),
        "overlong": lambda: overlong_reward(num_tokens, max_len, buffer),
        "accuracy": lambda: accuracy_reward(text, label, answer_format),
        "hybrid": lambda: hybrid_reward(text, mode),
        "thinking": lambda: thinking_reward(accuracy_reward(text, label, answer_format), judge_score, mode),
    }
    components = {name: compute[name]() for name in SCALAR_COMPONENTS if name in weights}
    return Score(components, sum((weights[name] * value for name, value in components.items()), 0.0))
