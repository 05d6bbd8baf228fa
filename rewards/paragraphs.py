"""PRPO paragraph rewards (Nguyen et al. 2025, "PRPO: Paragraph-level Policy Optimization for
Vision-Language Deepfake Detection"; SPEC section 5).

A response is split into paragraphs; paragraph k earns
``r_k = alpha * VCR_k + beta * PCR_k``: VCR is the CLIP similarity of the
paragraph's keyphrase to the media mapped to [0, 1] by (cos + 1) / 2, PCR
whether the final answer agrees with the real/fake lean of the reasoning
before it. Pure python/torch: the encoders are passed in as callables.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

from rewards.answer import HEADING_ANSWER_RE

VCR_FAILURE = 0.5  # the paper's score when no keyphrase or embedding can be had
# YAKE's cost grows faster than linearly; a paragraph of a 1024-token response fits well within this.
KEYPHRASE_MAX_CHARS = 5000

_BLANK_LINE_RE = re.compile(r"\n[^\S\n]*\n\s*")
_ANSWER_LINE_RE = re.compile(r"^[^\S\n]*(?:#+[^\S\n]*)?(?:final[^\S\n]+answer|answer|conclusion)[^\S\n]*:", re.IGNORECASE | re.MULTILINE)
_TAG_RE = re.compile(r"</?(?:think|answer)>")
_WORD_RE = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")


@dataclass(frozen=True)
class Paragraph:
    """A kept paragraph: its stripped text and its span ``text == response[start:end]``."""

    text: str
    start: int
    end: int
    is_answer: bool


def _is_answer(text: str) -> bool:
    # A `### Answer:` heading counts after reasoning on its line too (DX-LLaVA's `**Cue**: ... ### Answer: fake`).
    return "<answer>" in text or _ANSWER_LINE_RE.search(text) is not None or HEADING_ANSWER_RE.search(text) is not None


def segment_paragraphs(text: str, *, min_chars: int = 20, max_paragraphs: int = 8) -> list[Paragraph]:
    """Split ``text`` on blank lines; keep paragraphs longer than ``min_chars`` or holding an answer line.

    Answer lines: ``Answer:``, ``### Answer:`` (also after text on its line), ``Final Answer:``,
    ``Conclusion:`` (any case) or an ``<answer>`` tag. Beyond ``max_paragraphs`` (PRPO's K), the first K-1 and the last are kept: the
    last one usually carries the conclusion that PCR checks.
    """
    kept: list[Paragraph] = []
    position = 0
    for piece_end, next_start in [(m.start(), m.end()) for m in _BLANK_LINE_RE.finditer(text)] + [(len(text), len(text))]:
        piece = text[position:piece_end]
        stripped = piece.strip()
        if stripped:
            start = position + (len(piece) - len(piece.lstrip()))
            answer = _is_answer(stripped)
            if len(stripped) > min_chars or answer:
                kept.append(Paragraph(stripped, start, start + len(stripped), answer))
        position = next_start
    if len(kept) > max_paragraphs:
        kept = kept[: max_paragraphs - 1] + kept[-1:]
    return kept


@dataclass(frozen=True)
class Lexicon:
    """Real- and fake-leaning terms and negations, as tuples of words (see ``rewards/lexicon.json``)."""

    real: frozenset[tuple[str, ...]]
    fake: frozenset[tuple[str, ...]]
    negations: frozenset[tuple[str, ...]]
    window: int

    @classmethod
    def from_dict(cls, data: dict) -> Lexicon:
        def terms(key: str) -> frozenset[tuple[str, ...]]:
            return frozenset(tuple(_WORD_RE.findall(t.lower())) for t in data[key] if _WORD_RE.search(t.lower()))

        return cls(terms("real"), terms("fake"), terms("negations"), int(data["negation_window"]))


@lru_cache(maxsize=1)
def default_lexicon() -> Lexicon:
    """The lexicon shipped with the package (``rewards/lexicon.json``)."""
    return Lexicon.from_dict(json.loads(resources.files("rewards").joinpath("lexicon.json").read_text()))


def _negated(words: list[str], start: int, lexicon: Lexicon) -> bool:
    window = words[max(0, start - lexicon.window) : start]
    return any(tuple(window[i : i + len(neg)]) == neg for neg in lexicon.negations for i in range(len(window)))


def lean(text: str, lexicon: Lexicon | None = None) -> int:
    """+1 if ``text`` leans real, -1 if fake, 0 if neither: the sign of (real terms - fake terms).

    Longest terms match first ("natural lighting" is one term); a negation among the
    ``window`` words before a term flips it ("no blending seams" leans real).
    """
    lexicon = lexicon or default_lexicon()
    words = _WORD_RE.findall(text.lower())
    longest = max((len(t) for t in lexicon.real | lexicon.fake), default=1)
    balance, i = 0, 0
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            term = tuple(words[i : i + n])
            sign = 1 if term in lexicon.real else -1 if term in lexicon.fake else 0
            if sign:
                balance += -sign if _negated(words, i, lexicon) else sign
                i += n
                break
        else:
            i += 1
    return (balance > 0) - (balance < 0)


def _conclusion_index(paragraphs: Sequence[Paragraph]) -> int | None:
    """The final answer paragraph: the last paragraph, when it holds an answer line."""
    return len(paragraphs) - 1 if paragraphs and paragraphs[-1].is_answer else None


def prediction_consistency(paragraphs: Sequence[Paragraph], answer: str, lexicon: Lexicon | None = None) -> list[float]:
    """PCR: 1.0 for every non-final paragraph; the final answer paragraph gets 1.0 when the majority lean
    of the paragraphs before it agrees with ``answer`` (a tie agrees), else 0.0."""
    scores = [1.0] * len(paragraphs)
    final = _conclusion_index(paragraphs)
    if final is not None:
        majority = sum(lean(p.text, lexicon) for p in paragraphs[:final])
        verdict = "real" if majority > 0 else "fake" if majority < 0 else None
        scores[final] = 1.0 if verdict in (None, answer) else 0.0
    return scores


def visual_consistency(phrases: Sequence[str | None], media_embedding: torch.Tensor,
                       text_encoder: Callable[[list[str]], torch.Tensor]) -> list[float]:
    """VCR: (cos(phrase, media) + 1) / 2 per phrase; a missing phrase, an encoder error, a non-finite
    media embedding (media that could not be decoded) or a non-finite cosine scores 0.5."""
    wanted = [p for p in phrases if p]
    if not wanted or not torch.isfinite(media_embedding).all():
        return [VCR_FAILURE] * len(phrases)
    try:
        texts = text_encoder(wanted).float()
        cos = torch.nn.functional.cosine_similarity(texts, media_embedding.float().reshape(1, -1), dim=-1).tolist()
    except Exception:  # a broken encoder costs the visual term, never the training step
        return [VCR_FAILURE] * len(phrases)
    by_phrase = iter(cos)
    out = []
    for phrase in phrases:
        value = next(by_phrase) if phrase else math.nan
        out.append((value + 1.0) / 2.0 if math.isfinite(value) else VCR_FAILURE)
    return out


def make_keyphrase_extractor(language: str = "en", max_ngram: int = 10) -> Callable[[str], str | None]:
    """YAKE top-1 keyphrase (n-grams up to ``max_ngram`` words), as the official PRPO code; None when YAKE finds none.

    Only the first ``KEYPHRASE_MAX_CHARS`` characters of a paragraph are read.
    """
    import yake

    extractor = yake.KeywordExtractor(lan=language, n=max_ngram, top=1)

    def keyphrase(text: str) -> str | None:
        try:
            found = extractor.extract_keywords(_TAG_RE.sub(" ", text[:KEYPHRASE_MAX_CHARS]))
        except Exception:  # YAKE on odd text (e.g. lone surrogates) scores VCR_FAILURE instead of raising
            return None
        return found[0][0] if found else None

    return keyphrase


def vcr_phrases(paragraphs: Sequence[Paragraph], answer: str, keyphrase: Callable[[str], str | None]) -> list[str | None]:
    """What VCR embeds per paragraph: the predicted label word for the conclusion, else the keyphrase."""
    final = _conclusion_index(paragraphs)
    return [answer if k == final else keyphrase(p.text) for k, p in enumerate(paragraphs)]


def paragraph_rewards(
    paragraphs: Sequence[Paragraph],
    answer: str | None,
    media_embedding: torch.Tensor | None,
    text_encoder: Callable[[list[str]], torch.Tensor] | None,
    *,
    keyphrase: Callable[[str], str | None] | None = None,
    alpha: float = 0.5,
    beta: float = 0.5,
    lexicon: Lexicon | None = None,
) -> list[float]:
    """One reward per paragraph: alpha * VCR + beta * PCR (PRPO, SPEC section 5).

    ``answer`` is the parsed verdict (``real``/``fake``); None (unparsable) gives every paragraph 0.
    Without media (``media_embedding`` or ``text_encoder`` None) the reward is PCR alone. The
    conclusion paragraph is embedded as the predicted label word, the others as their keyphrase.
    """
    if answer is None:
        return [0.0] * len(paragraphs)
    pcr = prediction_consistency(paragraphs, answer, lexicon)
    if media_embedding is None or text_encoder is None:
        return pcr
    phrases = vcr_phrases(paragraphs, answer, keyphrase or make_keyphrase_extractor())
    vcr = visual_consistency(phrases, media_embedding, text_encoder)
    return [alpha * v + beta * c for v, c in zip(vcr, pcr)]
