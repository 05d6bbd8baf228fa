"""Stage-3 rewards (hybrid, thinking, judge parsing) and PRPO paragraph rewards, against hand-computed values."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.judge_prompt import build_judge_prompt, parse_judge_score
from rewards.modes import hybrid_reward, think_content, thinking_reward
from rewards.outcome import overlong_reward, score_response
from rewards.paragraphs import (
    Lexicon,
    Paragraph,
    default_lexicon,
    lean,
    make_keyphrase_extractor,
    paragraph_rewards,
    prediction_consistency,
    segment_paragraphs,
    visual_consistency,
)
from rewards.score import Score


@pytest.mark.parametrize(
    "text, mode, expected",
    [
        ("<think>seams at the jaw</think><answer>fake</answer>", "think", 0.0),
        ("<think></think><answer>fake</answer>", "think", -1.0),
        ("<think> \n\t </think><answer>fake</answer>", "think", -1.0),
        ("<answer>fake</answer>", "think", -1.0),
        ("<think>unclosed reasoning<answer>fake</answer>", "think", -1.0),
        ("<think></think><answer>real</answer>", "no_think", 0.0),
        ("<think>\n</think><answer>real</answer>", "no_think", 0.0),
        ("<answer>real</answer>", "no_think", 0.0),
        ("<think>I looked</think><answer>real</answer>", "no_think", -1.0),
    ],
)
def test_hybrid_reward_every_mode_combination(text, mode, expected):
    assert hybrid_reward(text, mode) == expected


def test_think_content_takes_the_first_closed_block():
    assert think_content("<think> a </think><think>b</think>") == "a"
    assert think_content("</think><think>x") == ""


@pytest.mark.parametrize(
    "accuracy, judge, mode, expected",
    [
        (1.0, 0.7, "think", 0.7),  # min(1, 0.7)
        (0.0, 0.9, "think", 0.0),  # min(0, 0.9): a well-argued wrong answer earns nothing
        (1.0, 1.0, "think", 1.0),
        (1.0, 0.7, "no_think", 0.0),
        (0.0, 0.7, "no_think", 0.0),
        (1.0, None, "think", 0.0),  # judge not asked or failed
        (1.0, 1.5, "think", 1.0),  # clamped
        (1.0, -0.3, "think", 0.0),
        (1.0, math.nan, "think", 0.0),
    ],
)
def test_thinking_reward_min_rule(accuracy, judge, mode, expected):
    assert thinking_reward(accuracy, judge, mode) == pytest.approx(expected)


@pytest.mark.parametrize("fn", [lambda: hybrid_reward("", "/think"), lambda: thinking_reward(1.0, 0.5, "Think")])
def test_unknown_mode_is_a_clear_error(fn):
    with pytest.raises(ValueError, match="mode must be one of"):
        fn()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>0.7</answer>", 0.7),
        ("The reasoning is sound. <answer> 1.0 </answer>", 1.0),
        ("<answer>.5</answer>", 0.5),
        ("<answer>3</answer>", 1.0),
        ("<answer>-0.5</answer>", 0.0),
        ("<answer>0.2</answer> then <answer>0.9</answer>", 0.9),
        ("<answer>high</answer>", 0.0),
        ("<answer>0.7 points</answer>", 0.0),
        ("<answer>nan</answer>", 0.0),
        ("0.7", 0.0),
        ("<answer>0.7", 0.0),
        ("", 0.0),
    ],
)
def test_parse_judge_score(text, expected):
    assert parse_judge_score(text) == pytest.approx(expected)


def test_judge_prompt_keeps_braces_of_the_response():
    prompt = build_judge_prompt("Is it real?", "<think>{x} and {}</think>", "Q: {question}\nR: {response}")
    assert prompt == "Q: Is it real?\nR: <think>{x} and {}</think>"


@pytest.mark.parametrize("num_tokens, expected", [(11, 0.0), (12, 0.0), (13, -0.25), (15, -0.75), (16, -1.0), (17, -1.0)])
def test_overlong_ramp_boundaries_small(num_tokens, expected):
    # L_max = 16, L_c = 4: 0 up to L = 12, ((16 - 4) - L) / 4 up to 16, then -1.
    assert overlong_reward(num_tokens, max_len=16, buffer=4) == pytest.approx(expected)


def test_score_response_with_stage3_components():
    weights = {"format": 1.0, "accuracy": 1.0, "hybrid": 1.0, "thinking": 2.0}
    kwargs = dict(max_len=750, buffer=150, answer_format="word")
    good = "<think>blending seam</think><answer>fake</answer>"
    # think, correct, judge 0.6: 0 + 1 + 0 + 2 * min(1, 0.6) = 2.2
    assert score_response(good, 10, "fake", weights, mode="think", judge_score=0.6, **kwargs).scalars() == pytest.approx(
        {"format": 0.0, "accuracy": 1.0, "hybrid": 0.0, "thinking": 0.6, "total": 2.2})
    # no_think with reasoning: hybrid -1, thinking 0: 0 + 1 - 1 + 0 = 0
    assert score_response(good, 10, "fake", weights, mode="no_think", judge_score=0.6, **kwargs).total == 0.0
    # wrong answer: thinking min(0, 0.6) = 0 even with a judge score (and the accuracy weight does not matter)
    assert score_response(good, 10, "real", {"thinking": 1.0}, judge_score=0.6, **kwargs) == Score({"thinking": 0.0}, 0.0)
    # paragraph is a vector scored elsewhere: accepted, not summed
    assert score_response(good, 10, "fake", {"accuracy": 1.0, "paragraph": 1.0}, **kwargs) == Score({"accuracy": 1.0}, 1.0)


# ---- PRPO segmentation ----

def _spans_match(text, paragraphs):
    return all(text[p.start:p.end] == p.text for p in paragraphs)


def test_segmentation_keeps_long_and_answer_paragraphs_with_spans():
    text = (
        "<think>The jaw line shows a blending seam in frame 3.\n\n"
        "ok.\n\n"  # under 20 characters: dropped
        "  \t\n"
        "The lips drift out of sync with the audio track.</think>\n \n"
        "<answer>fake</answer>"  # answer-only paragraph, 21 characters but kept as an answer anyway
    )
    paragraphs = segment_paragraphs(text)
    assert [p.text for p in paragraphs] == [
        "<think>The jaw line shows a blending seam in frame 3.",
        "The lips drift out of sync with the audio track.</think>",
        "<answer>fake</answer>",
    ]
    assert [p.is_answer for p in paragraphs] == [False, False, True]
    assert _spans_match(text, paragraphs)


@pytest.mark.parametrize("answer_line", ["Answer: fake", "### Answer: real", "final answer: fake", "Conclusion: real",
                                         "<answer>B</answer>", "x\nAnswer:"])
def test_short_answer_lines_are_kept(answer_line):
    text = f"Short one.\n\n{answer_line}"
    assert [p.text for p in segment_paragraphs(text)] == [answer_line]


def test_twenty_characters_exactly_is_dropped_twenty_one_kept():
    assert segment_paragraphs("a" * 20) == []
    assert segment_paragraphs("a" * 21) == [Paragraph("a" * 21, 0, 21, False)]


def test_more_than_k_paragraphs_keeps_the_first_k_minus_one_and_the_last():
    body = [f"Paragraph number {i} is long enough." for i in range(10)]
    text = "\n\n".join(body + ["Answer: fake"])
    paragraphs = segment_paragraphs(text, max_paragraphs=8)
    assert [p.text for p in paragraphs] == body[:7] + ["Answer: fake"]
    assert _spans_match(text, paragraphs)


def test_segmentation_of_crlf_and_degenerate_text():
    text = "First paragraph is long enough.\r\n\r\nSecond paragraph is long enough."
    assert [p.text for p in segment_paragraphs(text)] == ["First paragraph is long enough.", "Second paragraph is long enough."]
    assert segment_paragraphs("") == [] and segment_paragraphs("\n\n\n  \n") == []


# ---- PCR ----

LEX = Lexicon.from_dict({"real": ["natural", "natural lighting"], "fake": ["seam", "out of sync"],
                         "negations": ["no", "free of"], "negation_window": 2})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a visible seam", -1),
        ("natural lighting", 1),  # one two-word term, not "natural" + another
        ("no seam anywhere", 1),  # negation flips a fake term
        ("no visible seam", 1),  # within the two-word window
        ("no clearly visible seam", -1),  # outside it
        ("free of seam, natural", 1),  # a two-word negation
        ("natural but out of sync", 0),  # tie
        ("seamless", 0),  # whole words only
        ("", 0),
    ],
)
def test_lean_with_negations(text, expected):
    assert lean(text, LEX) == expected


def _paragraphs(*texts):
    last = len(texts) - 1
    return [Paragraph(t, 0, len(t), i == last) for i, t in enumerate(texts)]


def test_pcr_agreement_disagreement_and_ties():
    fake_lean = _paragraphs("a seam at the jaw", "the lips are out of sync", "natural skin", "<answer>fake</answer>")
    assert prediction_consistency(fake_lean, "fake", LEX) == [1.0, 1.0, 1.0, 1.0]  # 2 fake vs 1 real
    assert prediction_consistency(fake_lean, "real", LEX) == [1.0, 1.0, 1.0, 0.0]
    tie = _paragraphs("a seam", "natural", "<answer>real</answer>")
    assert prediction_consistency(tie, "real", LEX) == [1.0, 1.0, 1.0]
    assert prediction_consistency(tie, "fake", LEX) == [1.0, 1.0, 1.0]
    negated = _paragraphs("no seam here", "<answer>fake</answer>")  # leans real after negation
    assert prediction_consistency(negated, "fake", LEX) == [1.0, 0.0]
    no_conclusion = [Paragraph("a seam", 0, 6, False), Paragraph("another seam", 0, 12, False)]
    assert prediction_consistency(no_conclusion, "real", LEX) == [1.0, 1.0]


def test_shipped_lexicon_is_data():
    lexicon = default_lexicon()
    assert ("deepfake",) in lexicon.fake and ("out", "of", "sync") in lexicon.fake
    assert ("authentic",) in lexicon.real and ("not",) in lexicon.negations and lexicon.window == 3
    assert lean("There are no blending artifacts and the lighting is natural.") == 1
    assert lean("The face boundary is not natural and flickers with blending artifacts.") == -1


# ---- VCR ----

VECTORS = {"aligned": [1.0, 0.0], "orthogonal": [0.0, 1.0], "opposite": [-1.0, 0.0], "diagonal": [2.0, 2.0],
           "fake": [0.0, -3.0], "real": [3.0, 0.0]}


def fixed_encoder(texts):
    return torch.tensor([VECTORS[t] for t in texts])


MEDIA = torch.tensor([1.0, 0.0])


def test_vcr_maps_cosine_to_unit_interval():
    phrases = ["aligned", "orthogonal", "opposite", "diagonal", None]
    expected = [1.0, 0.5, 0.0, (1 / math.sqrt(2) + 1) / 2, 0.5]
    assert visual_consistency(phrases, MEDIA, fixed_encoder) == pytest.approx(expected)


def test_vcr_failures_score_one_half():
    def broken(texts):
        raise RuntimeError("encoder down")

    assert visual_consistency(["aligned", "opposite"], MEDIA, broken) == [0.5, 0.5]
    assert visual_consistency(["aligned"], torch.tensor([math.nan]), fixed_encoder) == [0.5]
    assert visual_consistency([None, None], MEDIA, fixed_encoder) == [0.5, 0.5]


def test_paragraph_rewards_combine_vcr_and_pcr():
    paragraphs = _paragraphs("aligned seam", "opposite seam", "<answer>real</answer>")
    first_word = lambda text: text.split()[0]  # noqa: E731 - a fixed keyphrase extractor
    # VCR: aligned 1.0, opposite 0.0, conclusion embeds "real" -> 1.0. PCR: 1, 1, and the final disagrees
    # with the fake lean of the two earlier paragraphs -> 0. r = 0.5 VCR + 0.5 PCR.
    rewards = paragraph_rewards(paragraphs, "real", MEDIA, fixed_encoder, keyphrase=first_word, lexicon=LEX)
    assert rewards == pytest.approx([1.0, 0.5, 0.5])
    weighted = paragraph_rewards(paragraphs, "fake", MEDIA, fixed_encoder, keyphrase=first_word, lexicon=LEX,
                                 alpha=0.25, beta=0.75)
    # conclusion embeds "fake": cos 0 -> 0.5; PCR agrees -> 1: 0.25 * 0.5 + 0.75 = 0.875
    assert weighted == pytest.approx([1.0, 0.75, 0.875])
    # without media: PCR alone; no parsable answer: every paragraph 0
    assert paragraph_rewards(paragraphs, "real", None, fixed_encoder, lexicon=LEX) == [1.0, 1.0, 0.0]
    assert paragraph_rewards(paragraphs, None, MEDIA, fixed_encoder, keyphrase=first_word) == [0.0, 0.0, 0.0]
    assert paragraph_rewards([], "real", MEDIA, fixed_encoder) == []


def test_yake_keyphrase():
    keyphrase = make_keyphrase_extractor()
    phrase = keyphrase("<think>The face boundary shows a blending seam near the jaw line.</think>")
    assert phrase and "think" not in phrase and phrase.lower() in "the face boundary shows a blending seam near the jaw line."
    assert keyphrase("") is None and keyphrase("   ") is None


# ---- bad input ----

SOUP = ["<think>", "</think>", "<answer>", "</answer>", "\n\n", "\n", " ", "real", "fake", "not", "no", "seam",
        "Answer:", "### Answer:", "\\boxed{A}", "0.7", "é", "\ud800", "<|im_end|>", "x" * 25]
soup = st.lists(st.sampled_from(SOUP), max_size=40).map("".join)
any_text = st.one_of(st.text(), soup)


def _assert_defined(text, keyphrase=None):
    for mode in ("think", "no_think"):
        assert hybrid_reward(text, mode) in (0.0, -1.0)
    assert 0.0 <= parse_judge_score(text) <= 1.0
    paragraphs = segment_paragraphs(text)
    assert len(paragraphs) <= 8 and _spans_match(text, paragraphs)
    assert lean(text) in (-1, 0, 1)
    for answer in ("real", "fake", None):
        rewards = paragraph_rewards(paragraphs, answer, MEDIA, lambda t: torch.ones(len(t), 2),
                                    keyphrase=keyphrase or (lambda t: t[:30]))
        assert len(rewards) == len(paragraphs) and all(0.0 <= r <= 1.0 for r in rewards)


@settings(max_examples=200, deadline=None)
@given(any_text)
def test_new_rewards_never_raise(text):
    _assert_defined(text)


_KEYPHRASE = make_keyphrase_extractor()


@settings(max_examples=40, deadline=None)
@given(any_text)
def test_yake_keyphrase_never_raises(text):
    phrase = _KEYPHRASE(text)
    assert phrase is None or isinstance(phrase, str)


@pytest.mark.parametrize(
    "text",
    [
        "x" * 100_000,
        ("A long paragraph about a blending seam.\n\n" * 2500)[:100_000],
        "\n\n" * 50_000,
        "<think>" * 14_000,
        "<answer>" * 12_500 + "0.7</answer>",
        "not " * 25_000,
        "<think>\ud800\udfff réel 假</think>\n\n<answer>fake</answer>",
        "<|im_end|><|endoftext|>",
        "   \n\t  ",
    ],
    ids=["plain", "paragraphs", "blank-lines", "openers", "judge-openers", "negations", "surrogates", "special", "blank"],
)
def test_adversarial_text(text):
    _assert_defined(text, _KEYPHRASE)
