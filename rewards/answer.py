"""Parse the real/fake verdict out of a detector response (SPEC section 2).

Responses look like ``<think>...</think><answer>real</answer>``. The answer
vocabulary is configuration: the plain words ``real``/``fake`` or the letter
form of the official BusterX++ code (``A) real``, ``B) fake``, the choice
given as ``\\boxed{A}``).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

AnswerFormat = Literal["word", "letter"]

_OPEN = "<answer>"
_CLOSE = "</answer>"

# re.ASCII keeps re.IGNORECASE from folding look-alikes (the Kelvin sign
# matches "k" under Unicode rules) into a verdict.
_WORD_RE = re.compile(r"(real|fake)\.?", re.IGNORECASE | re.ASCII)
_BOXED_RE = re.compile(r"\\boxed\{\s*([AB])\s*\}", re.IGNORECASE | re.ASCII)
_LETTER_RE = re.compile(r"([AB])(?:\)\s*(real|fake))?\.?", re.IGNORECASE | re.ASCII)
_LETTER_TO_WORD = {"A": "real", "B": "fake"}


def last_answer(text: str) -> str | None:
    """Content of the last ``<answer>`` that is closed, up to its first ``</answer>``.

    str.rfind/find keep this linear: a lazy ``<answer>(.*?)</answer>`` regex
    rescans the rest of the text from every unclosed opening tag, which is
    quadratic on adversarial output.
    """
    last_close = text.rfind(_CLOSE)
    if last_close < 0:
        return None
    start = text.rfind(_OPEN, 0, last_close)
    if start < 0:
        return None
    start += len(_OPEN)
    return text[start : text.find(_CLOSE, start)]


def _parse_letter(content: str) -> str | None:
    boxed = _BOXED_RE.findall(content)
    if boxed:
        return _LETTER_TO_WORD[boxed[-1].upper()]
    match = _LETTER_RE.fullmatch(content)
    if match is None:
        return None
    verdict = _LETTER_TO_WORD[match.group(1).upper()]
    word = match.group(2)
    # "A) fake" contradicts itself; guessing either side would reward noise.
    if word is not None and word.lower() != verdict:
        return None
    return verdict


def parse_answer(text: str, answer_format: AnswerFormat = "word") -> str | None:
    """Return ``"real"``, ``"fake"`` or ``None`` from the last answer tag of ``text``.

    ``"word"``: the stripped answer is ``real`` or ``fake`` (any case, optional
    trailing period). ``"letter"``: the last ``\\boxed{A|B}`` inside the
    answer, else a bare ``A``/``B`` or ``A) real``/``B) fake``; A is real, B
    is fake. Never raises on a ``str``.
    """
    if answer_format not in get_args(AnswerFormat):
        raise ValueError(f"answer_format must be one of {get_args(AnswerFormat)}, got {answer_format!r}")
    content = last_answer(text)
    if content is None:
        return None
    content = content.strip()
    if answer_format == "letter":
        return _parse_letter(content)
    match = _WORD_RE.fullmatch(content)
    return match.group(1).lower() if match else None
