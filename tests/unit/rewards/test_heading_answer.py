"""The DX-LLaVA heading answer form (`data.answer_format: heading`): `### Answer: real|fake` after the reasoning."""

import pytest

from rewards.answer import parse_answer
from rewards.outcome import accuracy_reward, format_reward, score_response
from rewards.paragraphs import segment_paragraphs

OFFICIAL = "**Skin Texture Anomalies**: The skin exhibits unnatural smoothness and lacks pores. ### Answer: fake"


@pytest.mark.parametrize(
    "text, expected",
    [
        (OFFICIAL, "fake"),
        ("**Cue**: natural light.\n\n### Answer: real", "real"),
        ("Reasoning.\n\n### Answer: **Fake**.", "fake"),
        ("Reasoning.\n## answer:REAL\n", "real"),
        ("### Answer: real\n\nOn second thought.\n\n### Answer: fake", "fake"),  # the last one counts
        ("Reasoning.\n\n### Answer: probably fake", None),
        ("Reasoning.\n\n### Answer:", None),
        ("Reasoning.\n\n### Answer:\nfake", None),  # the verdict belongs on the answer's line
        ("Answer: fake", None),  # no heading
        ("<think>x</think><answer>fake</answer>", None),
    ],
)
def test_parse_heading_answer(text, expected):
    assert parse_answer(text, "heading") == expected


def test_word_form_ignores_headings():
    assert parse_answer(OFFICIAL, "word") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        (OFFICIAL, 0.0),
        ("**Cue**: seams.\n\n### Answer: fake\n", 0.0),
        ("### Answer: fake", -1.0),  # no reasoning before it
        ("Reasoning.\n\n### Answer: fake\n\nMore text.", -1.0),  # not the end
        ("Reasoning.\n\n### Answer: real\n\n### Answer: fake", -1.0),  # two answers
        ("Reasoning.\n\n### Answer: unsure", -1.0),
        ("<think>x</think><answer>fake</answer>", -1.0),
    ],
)
def test_heading_format_reward(text, expected):
    assert format_reward(text, "heading") == expected


def test_heading_accuracy_and_score():
    assert accuracy_reward(OFFICIAL, "fake", "heading") == 1.0
    assert accuracy_reward(OFFICIAL, "real", "heading") == 0.0
    score = score_response(OFFICIAL, 20, "fake", {"format": 1.0, "accuracy": 1.0}, max_len=750, buffer=150,
                           answer_format="heading")
    assert score.components == {"format": 0.0, "accuracy": 1.0} and score.total == 1.0


def test_prpo_segmentation_marks_heading_answers_as_the_conclusion():
    text = "**Texture**: unnaturally smooth skin without pores.\n\n### Answer: fake"
    paragraphs = segment_paragraphs(text)
    assert [p.is_answer for p in paragraphs] == [False, True]
    # The official single-line form: the answer follows the reasoning on its line.
    assert [p.is_answer for p in segment_paragraphs(OFFICIAL)] == [True]


def test_heading_parse_of_long_hash_runs():
    # One match may start per run of `#` (the look-behind), so this returns at once instead of backtracking.
    text = "#" * 200_000 + " answer" * 1000
    assert parse_answer(text, "heading") is None and format_reward(text, "heading") == -1.0
