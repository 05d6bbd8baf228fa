"""The LLaVA JSON training layout of DX-LLaVA (the official PRPO code's data, SPEC section 7).

``ROOT/*.json``: each a JSON list of ``{"id", "image", "conversations": [{"from": "human", "value":
"<image>\\n..."}, {"from": "gpt", "value": "**Cue**: ... ### Answer: fake"}], "binary_label"}``
(1 = fake), with ``image`` relative to ROOT (the official ``--image_folder``; put the JSON files
there). The gpt turn's reasoning, without its ``### Answer:``, becomes the row's ``explanation``
(what SFT teaches). DF-R5 image paths ``<domain>/<split>/<label>/...`` give the row its domain;
a JSON file named ``train*``, ``val*`` or ``test*`` gives its rows that official split, else the
path's split does, else none (a seeded split by file). An entry that cannot be used is rejected
with its id and the reason: no ``<image>`` in the human turn, no gpt turn, no label, a label that
contradicts the answer, an image that is missing (one outside ROOT: see `scan_source`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raytrain.data.layouts.scan import SPLIT_NAMES, LayoutScan
from raytrain.data.manifest import LABELS, media_kind
from rewards.answer import HEADING_ANSWER_RE, heading_answer

IMAGE_TOKEN = "<image>"
_SNIFF_BYTES = 1 << 16


def _json_lists(root: Path) -> list[Path]:
    """The top-level JSON files of ``root`` that look like LLaVA conversation lists (from their first bytes)."""
    found = []
    for file in sorted(root.glob("*.json")):
        with open(file, encoding="utf-8", errors="replace") as fh:
            head = fh.read(_SNIFF_BYTES)
        if head.lstrip().startswith("[") and '"conversations"' in head:
            found.append(file)
    return found


def detect_llava(root: Path) -> bool:
    return bool(_json_lists(root))


def _file_split(file: Path) -> str | None:
    stem = file.stem.lower()
    return next((s for s in SPLIT_NAMES if stem.startswith(s)), None)


def _turn(conversations: list, speaker: str) -> str | None:
    """The value of the first turn of ``speaker`` (`human` or `gpt`), or None."""
    for turn in conversations:
        if isinstance(turn, dict) and turn.get("from") == speaker and isinstance(turn.get("value"), str):
            return turn["value"]
    return None


def _binary_label(value) -> str | None:
    """`binary_label` as a label: 1 (or 1.0, "1", true, "fake") is fake, 0 real; None for anything else."""
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return value.strip().lower()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return LABELS[int(number)] if number in (0.0, 1.0) else None  # LABELS = (real, fake)


def reasoning(answer_text: str) -> str:
    """The gpt turn without its last ``### Answer:`` (to the end of the text): the reasoning SFT teaches."""
    matches = list(HEADING_ANSWER_RE.finditer(answer_text))
    return (answer_text[:matches[-1].start()] if matches else answer_text).strip()


def _entry(scan: LayoutScan, file: Path, index: int, item) -> None:
    """Add one list item of ``file`` as an entry, or reject it naming its id."""
    where = f"{file.name} entry {index}"
    if not isinstance(item, dict):
        scan.reject(file, f"{where}: not an object")
        return
    where = f"{file.name} entry {item.get('id', index)!r}"
    image = item.get("image")
    if not isinstance(image, str) or not image.strip():
        scan.reject(file, f"{where}: no image")
        return
    path = scan.root / image
    conversations = item.get("conversations") if isinstance(item.get("conversations"), list) else []
    human, gpt = _turn(conversations, "human"), _turn(conversations, "gpt")
    problem = None
    if human is None or IMAGE_TOKEN not in human:
        problem = f"the human turn has no {IMAGE_TOKEN}"
    elif not gpt or not gpt.strip():
        problem = "no gpt turn"
    label, answer = _binary_label(item.get("binary_label")), heading_answer(gpt or "")
    if problem is None and label is None and answer is None:
        problem = f"no binary_label (0 real, 1 fake) and no ### Answer: real|fake, got {item.get('binary_label')!r}"
    elif problem is None and label is not None and answer is not None and label != answer:
        problem = f"binary_label {item.get('binary_label')!r} ({label}) contradicts the answer {answer!r}"
    normalised = Path(os.path.normpath(path))  # an existing one outside ROOT is judged by `scan_source`
    if problem is None and not normalised.is_file():
        problem = (f"image {image!r} does not exist" if normalised.is_relative_to(scan.root)
                   else f"image {image!r} is outside the dataset folder {scan.root}")
    elif problem is None and media_kind(normalised) != "image":
        problem = f"{image!r} is not an image"
    if problem is not None:
        scan.reject(path, f"{where}: {problem}")
        return
    rel = Path(os.path.relpath(normalised, scan.root))
    parts = rel.parts
    dfr5 = len(parts) >= 4 and parts[1] in SPLIT_NAMES and parts[2] in LABELS
    scan.add(normalised, "image", label=label or answer, category="image-generation", domain=parts[0] if dfr5 else "",
             clips=[rel.as_posix()], official_split=_file_split(file) or (parts[1] if dfr5 else None),
             explanation=reasoning(gpt) or None)


def scan_llava(root: Path, source: str = "llava") -> tuple[list[dict], list[dict]]:
    """Every entry of every LLaVA JSON list in ``root`` (see the module docstring)."""
    files = _json_lists(root)
    if not files:
        raise ValueError(f"{root} has no LLaVA JSON list (a *.json list of objects with conversations)")
    scan = LayoutScan(root, source)
    for file in files:
        try:
            items = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: not valid JSON ({exc})") from exc
        if not isinstance(items, list):
            raise ValueError(f"{file}: a LLaVA training file is a JSON list, not {type(items).__name__}")
        for index, item in enumerate(items):
            _entry(scan, file, index, item)
    return scan.result()
