import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.answer import parse_answer
from rewards.outcome import accuracy_reward, format_reward, overlong_reward, score_response
from rewards.score import Score

TAG_ALPHABET = [
    "<think>", "</think>", "<answer>", "</answer>", "<answer", "answer>",
    "real", "FAKE", "A", "B", ")", ".", "\\boxed{", "}", " ", "\n", "x",
]
tag_soup = st.lists(st.sampled_from(TAG_ALPHABET), max_size=30).map("".join)
any_text = st.one_of(st.text(), tag_soup)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>frames flicker</think><answer>fake</answer>", 0.0),
        ("<think></think><answer>real</answer>", 0.0),
        ("\n  <think>a\nb</think>\n\n<answer> real </answer>\n", 0.0),
        ("<answer>real</answer>", -1.0),
        ("<think>x</think><answer>real</answer><answer>fake</answer>", -1.0),
        ("Sure! <think>x</think><answer>real</answer>", -1.0),
        ("<think>x</think><answer>real</answer> done", -1.0),
        ("<think>x</think> and <answer>real</answer>", -1.0),
        ("<think><think>x</think></think><answer>real</answer>", -1.0),
        ("<think>x</think><answer>real<think></answer>", -1.0),
        ("<think>x<answer></think>real</answer>", -1.0),
        ("<answer>real</answer><think>x</think>", -1.0),
        ("<think>x</think><answer>real", -1.0),
        ("<think>x<answer>real</answer>", -1.0),
        ("   \n\t", -1.0),
        ("", -1.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text) == expected


@pytest.mark.parametrize(
    "text, answer_format, expected",
    [
        ("<think>x</think><answer>Fake</answer>", "word", "fake"),
        ("<answer> REAL. </answer>", "word", "real"),
        ("<answer>real</answer> then <answer>fake</answer>", "word", "fake"),
        ("<answer>probably fake</answer>", "word", None),
        ("<answer>real", "word", None),
        ("no tags, just fake", "word", None),
        ("<answer>\\boxed{A}</answer>", "letter", "real"),
        ("<answer>The answer is \\boxed{B}.</answer>", "letter", "fake"),
        ("<answer>A) real</answer>", "letter", "real"),
        ("<answer> B </answer>", "letter", "fake"),
        ("<answer>B) fake</answer>", "letter", "fake"),
        ("<answer>A) fake</answer>", "letter", None),
        ("<answer>\\boxed{C}</answer>", "letter", None),
        ("<answer>real</answer>", "letter", None),
        ("<answer>\\boxed{A}</answer>", "word", None),
    ],
)
def test_parse_answer(text, answer_format, expected):
    assert parse_answer(text, answer_format) == expected


def test_accuracy_reward():
    assert accuracy_reward("<think></think><answer>FAKE</answer>", "fake") == 1.0
    assert accuracy_reward("<think></think><answer>fake</answer>", "Fake") == 1.0
    assert accuracy_reward("<think></think><answer>real</answer>", "fake") == 0.0
    assert accuracy_reward("<answer>\\boxed{B}</answer>", "fake", "letter") == 1.0
    assert accuracy_reward("<answer>\\boxed{A}</answer>", "fake", "letter") == 0.0
    assert accuracy_reward("<answer>no idea</answer>", "real") == 0.0


@pytest.mark.parametrize(
    "num_tokens, expected",
    [(0, 0.0), (600, 0.0), (601, -1 / 150), (675, -0.5), (750, -1.0), (751, -1.0), (5000, -1.0)],
)
def test_overlong_reward_boundaries(num_tokens, expected):
    assert overlong_reward(num_tokens, max_len=750, buffer=150) == pytest.approx(expected)


@pytest.mark.parametrize("buffer, max_len", [(0, 750), (-5, 750), (751, 750)])
def test_overlong_reward_rejects_bad_buffer(buffer, max_len):
    with pytest.raises(ValueError, match="buffer"):
        overlong_reward(10, max_len=max_len, buffer=buffer)


def test_score_response_weighted_total():
    kwargs = dict(max_len=750, buffer=150, answer_format="word")
    good = "<think>blurry mouth</think><answer>fake</answer>"
    weights = {"format": 1.0, "overlong": 1.0, "accuracy": 2.0}
    # format 0, overlong -0.5 at 675 tokens, accuracy 1 -> 0 - 0.5 + 2 = 1.5
    assert score_response(good, 675, "fake", weights, **kwargs).scalars() == {
        "format": 0.0, "overlong": -0.5, "accuracy": 1.0, "total": 1.5,
    }
    # Unformatted and wrong: 0.5 * -1 + 1 * 0 = -0.5; overlong not requested.
    assert score_response("fake", 10, "real", {"format": 0.5, "accuracy": 1.0}, **kwargs).scalars() == {
        "format": -1.0, "accuracy": 0.0, "total": -0.5,
    }
    assert score_response(good, 10, "fake", {}, **kwargs) == Score({}, 0.0)


def test_score_response_rejects_unknown_component():
    with pytest.raises(ValueError, match="known.*format"):
        score_response("", 1, "real", {"lenght": 1.0}, max_len=750, buffer=150, answer_format="word")


def _assert_total_functions(text):
    for answer_format in ("word", "letter"):
        assert parse_answer(text, answer_format) in ("real", "fake", None)
        assert accuracy_reward(text, "real", answer_format) in (0.0, 1.0)
    assert format_reward(text) in (0.0, -1.0)
    scores = score_response(
        text, len(text), "fake", {"format": 1, "overlong": 1, "accuracy": 1},
        max_len=750, buffer=150, answer_format="word",
    )
    assert -3.0 <= scores.total <= 1.0


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_rewards_never_raise(text):
    _assert_total_functions(text)


@settings(max_examples=100, deadline=None)
@given(
    think=st.text().filter(lambda s: "<" not in s),
    label=st.sampled_from(["real", "fake", "Real", "FAKE"]),
)
def test_well_formed_responses_score_as_written(think, label):
    text = f"<think>{think}</think>\n<answer>{label}</answer>"
    assert format_reward(text) == 0.0
    assert parse_answer(text) == label.lower()


@pytest.mark.parametrize(
    "text",
    [
        "x" * 100_000,
        "<answer>" * 12_500,
        "</answer>" * 11_112,
        "<think>" * 7_000 + "</answer>" * 5_000,
        "<answer>" + " " * 100_000 + "real" + "." * 10 + "</answer>",
        "<answer>" + "\\boxed{" * 14_000 + "</answer>",
        "<answer>\ud800real\udfff</answer>",
        "<think>\ud800</think><answer>fake</answer>",
    ],
    ids=["plain", "openers", "closers", "mixed", "spaces", "boxed", "surrogates", "surrogate-think"],
)
def test_adversarial_long_and_invalid_text(text):
    _assert_total_functions(text)


def test_surrogate_think_is_still_well_formed():
    assert format_reward("<think>\ud800</think><answer>fake</answer>") == 0.0
