"""DX-LLaVA question and answer files (raytrain.data.questions, jobs.make_questions) and the manifest rows
`jobs.evaluate --questions` builds from them; no model, no Ray."""

from __future__ import annotations

import json

import pytest

from jobs import make_questions
from raytrain.data.ingest import Source, ingest, scan_sources
from raytrain.data.questions import DX_LLAVA_QUESTION, answers, question_prompt, read_questions
from raytrain.eval.inference import question_rows
from tests.helpers.layout_trees import llava


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def manifest(tree, tmp_path_factory):
    from raytrain.data.manifest import write_manifest

    path = tmp_path_factory.mktemp("questions") / "manifest.parquet"
    write_manifest(ingest(scan_sources([Source(tree)])).table, path)
    return path


def test_make_questions_writes_the_official_fields(manifest, tree, tmp_path):
    out = tmp_path / "q.jsonl"
    assert make_questions.main(["--data", str(manifest), "--split", "train", "--output", str(out), "--image-root", str(tree)]) == 0
    questions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [q["question_id"] for q in questions] == list(range(4))
    assert {q["image"] for q in questions} == {"StyleGAN3/train/fake/fake_0.png", "ddim/train/fake/fake_0.png",
                                               "ddim/train/real/real_0.png", "extra/loose.png"}
    assert all(q["text"] == f"<image>\n{DX_LLAVA_QUESTION}" for q in questions)
    by_image = {q["image"]: q for q in questions}
    assert by_image["ddim/train/real/real_0.png"]["label"] == "real" and by_image["ddim/train/real/real_0.png"]["domain"] == "ddim"
    assert read_questions(out) == questions and question_prompt(questions) == DX_LLAVA_QUESTION

    rows, unreadable = question_rows(questions, tree)
    assert not unreadable and sorted(rows["id"].to_pylist()) == ["0", "1", "2", "3"]
    assert {(r["label"], r["domain"], r["split"]) for r in rows.to_pylist()} >= {("real", "ddim", "test")}

    assert make_questions.main(["--data", str(manifest), "--split", "nope", "--output", str(out)]) == 2


def test_question_rows_report_undecodable_images(tree):
    questions = [{"question_id": 7, "image": "ddim/train/fake/broken.png", "text": "<image>\nQ?", "label": "fake"}]
    rows, unreadable = question_rows(questions, tree)
    assert rows.num_rows == 0 and unreadable[0]["id"] == "7" and "cannot decode image" in unreadable[0]["error"]


def test_bad_question_files(tmp_path):
    path = tmp_path / "q.jsonl"
    for text, message in (('{"question_id": 0, "image": "a.png", "text": "t"}', "missing label"),
                          ('{"question_id": 0, "image": "a.png", "text": "t", "label": "maybe"}', "not real or fake"),
                          ('{"question_id": 0, "image": "a.png", "text": "t", "label": "real"}\n' * 2, "repeats"),
                          ("{oops", "invalid JSON"), ("", "no questions")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_questions(path)
    two = [{"text": "<image>\nA?"}, {"text": "<image>\nB?"}]
    with pytest.raises(ValueError, match="2 different texts"):
        question_prompt(two)
    assert question_prompt([{"text": "<image>\nIs {it} fake?"}]) == "Is {{it}} fake?"


def test_answers_in_the_official_fields():
    questions = [{"question_id": 0, "image": "a.png", "text": "<image>\nQ?", "label": "Fake"},
                 {"question_id": 1, "image": "b.png", "text": "<image>\nQ?", "label": "real"}]
    predictions = {"0": {"response": "**Cue**: x. ### Answer: fake", "answer": "fake", "status": "ok", "head_prob": 0.8},
                   "1": {"response": None, "answer": None, "status": "unreadable", "error": "cannot decode image",
                         "head_prob": None}}
    assert answers(questions, predictions, "m") == [
        {"question_id": 0, "prompt": "<image>\nQ?", "text": "**Cue**: x. ### Answer: fake", "predict": "fake",
         "label": "fake", "model_id": "m", "status": "ok", "head_prob": 0.8},
        {"question_id": 1, "prompt": "<image>\nQ?", "text": "", "predict": "None", "label": "real", "model_id": "m",
         "status": "unreadable", "error": "cannot decode image"},
    ]
