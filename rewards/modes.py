"""Stage-3 rewards of BusterX++ hybrid reasoning (Wen et al. 2025; SPEC section 3).

A prompt carries the mode flag ``/think`` or ``/no_think``. The hybrid reward
punishes a response that ignores the flag; the thinking reward grades the
reasoning of a correct think-mode answer with a judge model (SophiaVL-R1's
thinking reward model), capped by accuracy so a well-argued wrong answer earns
nothing.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

Mode = Literal["think", "no_think"]

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


def _check_mode(mode: str) -> None:
    if mode not in get_args(Mode):
        raise ValueError(f"mode must be one of {get_args(Mode)}, got {mode!r}")


def think_content(text: str) -> str:
    """Stripped content of the first closed ``<think>...</think>``, or "" when there is none."""
    start = text.find(_THINK_OPEN)
    if start < 0:
        return ""
    start += len(_THINK_OPEN)
    end = text.find(_THINK_CLOSE, start)
    return text[start:end].strip() if end >= 0 else ""


def hybrid_reward(text: str, mode: str) -> float:
    """-1.0 when ``text`` violates ``mode`` (non-empty think under no_think, empty think under think), else 0.0.

    A response with no closed think block has an empty think: it violates think
    mode, and the format reward punishes its missing tags in either mode.
    """
    _check_mode(mode)
    has_reasoning = bool(think_content(text))
    violated = has_reasoning if mode == "no_think" else not has_reasoning
    return -1.0 if violated else 0.0


def thinking_reward(accuracy: float, judge_score: float | None, mode: str) -> float:
    """0.0 under no_think; else min(accuracy, M(y)) with the judge score clamped to [0, 1].

    ``judge_score`` None (not asked, failed or timed out) or NaN scores 0.
    """
    _check_mode(mode)
    if mode == "no_think" or judge_score is None or math.isnan(judge_score):
        return 0.0
    return min(float(accuracy), min(max(float(judge_score), 0.0), 1.0))
