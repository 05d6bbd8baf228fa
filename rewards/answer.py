"""Parse the real/fake verdict out of a detector response (SPEC section 2).

Responses look like ``<think>...</think><answer>real</answer>``. The answer
vocabulary is configuration: the plain words ``real``/``fake`` or the letter
form of the official BusterX++ code (``A) real``, ``B) fake``, the choice
given as ``\\boxed{A}``), or the DX-LLaVA heading form of the official PRPO
code (paragraphs of reasoning ending in ``### Answer: fake``).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

AnswerFormat = Literal["word", "letter", "heading"]

_OPEN = "<answer>"
_CLOSE = "</answer>"

# re.ASCII keeps re.IGNORECASE from folding look-alikes (the Kelvin sign
# matches "k" under Unicode rules) into a verdict.
_WORD_RE = re.compile(r"(real|fake)\.?", re.IGNORECASE | re.ASCII)
_BOXED_RE = re.compile(r"\\boxed\{\s*([AB])\s*\}", re.IGNORECASE | re.ASCII)
_LETTER_RE = re.compile(r"([AB])(?:\)\s*(real|fake))?\.?", re.IGNORECASE | re.ASCII)
_LETTER_TO_WORD = {"A": "real", "B": "fake"}
# The heading form's answer: `### Answer: fake` to the end of its line, at a line's start or after the
# reasoning on the same line (the official targets: `**Cue**: ... ### Answer: fake`). The look-behind
# starts a match only at the first `#` of a run, and [^\S\n] keeps it on one line: linear in the text.
HEADING_ANSWER_RE = re.compile(r"(?<!#)#+[^\S\n]*answer[^\S\n]*:[^\S\n]*([^\n]*)", re.IGNORECASE | re.ASCII)
_HEADING_VERDICT_RE = re.compile(r"\**[^\S\n]*(real|fake)[^\S\n]*\**[^\S\n]*\.?[^\S\n]*", re.IGNORECASE | re.ASCII)


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


def heading_answer(text: str) -> str | None:
    """The verdict of the last ``### Answer:`` line of ``text`` (the DX-LLaVA targets' form), or None
    when there is no such line or its rest is not ``real``/``fake`` (optionally bold, trailing period)."""
    lines = HEADING_ANSWER_RE.findall(text)
    if not lines:
        return None
    match = _HEADING_VERDICT_RE.fullmatch(lines[-1].rstrip())
    return match.group(1).lower() if match else None


def parse_answer(text: str, answer_format: AnswerFormat = "word") -> str | None:
    """Return ``"real"``, ``"fake"`` or ``None`` from the last answer of ``text``.

    ``"word"``: the stripped answer is ``real`` or ``fake`` (any case, optional
    trailing period). ``"letter"``: the last ``\\boxed{A|B}`` inside the
    answer, else a bare ``A``/``B`` or ``A) real``/``B) fake``; A is real, B
    is fake. ``"heading"``: the last ``### Answer: real|fake`` line (`heading_answer`), no tags.
    Never raises on a ``str``.
    """
    if answer_format not in get_args(AnswerFormat):
        raise ValueError(f"answer_format must be one of {get_args(AnswerFormat)}, got {answer_format!r}")
    if answer_format == "heading":
        return heading_answer(text)
    content = last_answer(text)
    if content is None:
        return None
    content = content.strip()
    if answer_format == "letter":
        return _parse_letter(content)
    match = _WORD_RE.fullmatch(content)
    return match.group(1).lower() if match else None
