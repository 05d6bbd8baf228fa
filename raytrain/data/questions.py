"""DX-LLaVA's evaluation question and answer files (JSON lines, as the official PRPO evaluation reads and writes them).

A question is ``{"question_id", "image", "text", "label"}`` (``text`` is the human turn,
``<image>\\n`` then the question); we also write the manifest ``id`` and ``domain`` so that answers
keep per-domain metrics. An answer is ``{"question_id", "prompt", "text", "predict", "label", ...}``
with ``predict`` ``real``, ``fake`` or ``"None"`` (unparsable), as the official script writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raytrain.data.layouts.llava import IMAGE_TOKEN
from raytrain.data.manifest import LABELS, json_lines

# The question of the official DX-LLaVA data (its README's example), asking for the heading answer form.
DX_LLAVA_QUESTION = ("Analyze this image for any signs of digital manipulation or artificial generation and determine "
                     "if it is real or fake. Provide your reasoning first, then conclude with ### Answer: real or fake.")


def questions_from_rows(rows: list[dict], question: str, image_root: Path | None = None) -> list[dict]:
    """One question per image row, numbered in order; image paths relative to `image_root` when given
    (the official `--image-folder`), else as the manifest has them."""
    out = []
    for row in rows:
        image = row["path"] if image_root is None else os.path.relpath(row["path"], image_root)
        out.append({"question_id": len(out), "image": Path(image).as_posix(), "text": f"{IMAGE_TOKEN}\n{question}",
                    "label": row["label"], "id": row["id"], "domain": row.get("domain") or ""})
    return out


def write_jsonl(records: list[dict], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def read_questions(path: Path) -> list[dict]:
    """The questions of a JSON-lines file, checked: each has a unique question_id, an image, a text and a
    real/fake label (ValueError naming the line otherwise)."""
    path = Path(path)
    questions, seen = [], set()
    for lineno, q in json_lines(path):
        missing = [k for k in ("question_id", "image", "text", "label") if not isinstance(q, dict) or k not in q]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing {', '.join(missing)}")
        if str(q["label"]).lower() not in LABELS:
            raise ValueError(f"{path}:{lineno}: label {q['label']!r} is not real or fake")
        if str(q["question_id"]) in seen:
            raise ValueError(f"{path}:{lineno}: question_id {q['question_id']!r} repeats")
        seen.add(str(q["question_id"]))
        questions.append(q)
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def question_prompt(questions: list[dict]) -> str:
    """The one question the file asks (its text without `<image>`), as a `data.prompt` template; the
    evaluation asks every item the same question, so a file mixing several is refused."""
    texts = {q["text"].replace(IMAGE_TOKEN, "").strip() for q in questions}
    if len(texts) != 1:
        raise ValueError(f"the questions ask {len(texts)} different texts; put each text in its own file")
    return texts.pop().replace("{", "{{").replace("}", "}}")  # data.prompt is a format string ({media})


def answers(questions: list[dict], predictions: dict[str, dict], model: str) -> list[dict]:
    """One answer per question, in the official fields, from the predictions by question id; an
    unreadable image gets ``predict: "None"`` and its error."""
    out = []
    for q in questions:
        p = predictions[str(q["question_id"])]
        answer = {"question_id": q["question_id"], "prompt": q["text"], "text": p["response"] or "",
                  "predict": p["answer"] or "None", "label": str(q["label"]).lower(), "model_id": model,
                  "status": p["status"]}
        if p.get("head_prob") is not None:
            answer["head_prob"] = p["head_prob"]
        if p["status"] == "unreadable":
            answer["error"] = p["error"]
        out.append(answer)
    return out
