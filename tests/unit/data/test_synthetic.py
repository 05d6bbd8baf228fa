"""Synthetic deepfake dataset (raytrain.data.synthetic)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from raytrain.data.media import load_frames, probe
from raytrain.data.synthetic import FAKE_CATEGORIES, make_synthetic_dataset

SMALL = {"num_train": 16, "num_test": 8, "size": 56, "num_frames": 8}
BUDGET = {"max_pixels": 56 * 56, "min_pixels": 28 * 28}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    out = tmp_path_factory.mktemp("syn")
    summary = make_synthetic_dataset(out, seed=3, **SMALL)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return out, summary, records


def _frames(out: Path, rec: dict) -> np.ndarray:
    return load_frames(str(out / rec["path"]), rec["media"], 8, **BUDGET).astype(np.float32)


def test_layout_and_metadata(dataset):
    out, summary, records = dataset
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([r["path"] for r in records] + ["metadata.jsonl"])
    for rec in records:
        split, label, category, name = rec["path"].split("/")
        assert (split, label) == (rec["split"], rec["label"])
        assert category == ("camera" if label == "real" else rec["category"])
        assert name.endswith(".mp4" if rec["media"] == "video" else ".png")
        assert set(rec) == {"path", "label", "category", "split", "watermark", "media"}
    assert summary["total"] == len(records) == 24


def test_balance_and_categories(dataset):
    _, summary, records = dataset
    assert summary["splits"] == {"train": {"real": 8, "fake": 8}, "test": {"real": 4, "fake": 4}}
    for split in ("train", "test"):
        fakes = Counter(r["category"] for r in records if r["label"] == "fake" and r["split"] == split)
        assert set(fakes) == set(FAKE_CATEGORIES)
        assert max(fakes.values()) - min(fakes.values()) <= 1
    assert {r["category"] for r in records if r["label"] == "real"} == {"camera"}


def test_images_and_watermarks_on_both_classes(dataset):
    _, summary, records = dataset
    for label in ("real", "fake"):
        of_label = [r for r in records if r["label"] == label]
        assert any(r["media"] == "image" for r in of_label)
        assert any(r["media"] == "video" for r in of_label)
        assert any(r["watermark"] for r in of_label) and not all(r["watermark"] for r in of_label)
    assert summary["watermark"]["real"] == summary["watermark"]["fake"]


def test_videos_decode_with_expected_shape(dataset):
    out, _, records = dataset
    video = next(r for r in records if r["media"] == "video")
    expected = {"fps": 8.0, "num_frames": 8, "width": 56, "height": 56, "duration": 1.0, "codec": "h264"}
    assert probe(str(out / video["path"]), "video") == expected
    image = next(r for r in records if r["media"] == "image")
    assert probe(str(out / image["path"]), "image")["width"] == 56


def test_fake_cues_survive_compression(dataset):
    """Each category's artifact is measurable after H.264 at 56 px."""
    out, _, records = dataset

    def videos(category):
        return [_frames(out, r) for r in records if r["category"] == category and r["media"] == "video"]

    def flicker(f):  # strongest frame-to-frame change in any 7x7 block
        d = np.abs(np.diff(f, axis=0)).mean(axis=(0, 3))
        return float(d.reshape(8, 7, 8, 7).mean(axis=(1, 3)).max())

    def high_freq(f):  # mean absolute difference between horizontal neighbours
        return float(np.abs(np.diff(f, axis=2)).mean())

    real = videos("camera")
    assert min(flicker(f) for f in videos("lip-sync")) > 2 * max(flicker(f) for f in real)
    assert min(high_freq(f) for f in videos("text-to-video")) > 3 * max(high_freq(f) for f in real)
    # Swapped faces are far from every skin tone: little red dominance at the centre.
    centre = slice(20, 36)
    for f in videos("face-swap"):
        r, g, b = f[:, centre, centre].mean(axis=(0, 1, 2))
        assert not (r > g > b), (r, g, b)


def test_deterministic_given_seed(dataset, tmp_path):
    out, _, records = dataset
    again = make_synthetic_dataset(tmp_path / "again", seed=3, **SMALL)
    assert again["total"] == len(records)
    assert (tmp_path / "again" / "metadata.jsonl").read_bytes() == (out / "metadata.jsonl").read_bytes()
    for rec in records:
        same = (tmp_path / "again" / rec["path"]).read_bytes() == (out / rec["path"]).read_bytes()
        assert same, rec["path"]
        assert np.array_equal(_frames(tmp_path / "again", rec), _frames(out, rec))

    make_synthetic_dataset(tmp_path / "other", seed=4, **SMALL)
    first = records[0]["path"]
    assert (tmp_path / "other" / first).read_bytes() != (out / first).read_bytes()


def test_existing_output_needs_overwrite(tmp_path):
    make_synthetic_dataset(tmp_path, num_train=6, num_test=0)
    with pytest.raises(FileExistsError, match="train"):
        make_synthetic_dataset(tmp_path, num_train=4, num_test=0)
    summary = make_synthetic_dataset(tmp_path, num_train=4, num_test=0, overwrite=True)
    assert summary["total"] == 4
    assert len([p for p in (tmp_path / "train").rglob("*") if p.is_file()]) == 4


@pytest.mark.parametrize(
    "kwargs", [{"size": 55}, {"num_train": 5}, {"watermark_share": 1.5}, {"num_frames": 0}])
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path, **kwargs)


def test_dfr5_images_with_llava_lists(tmp_path):
    from raytrain.data.ingest import Source, ingest, scan_sources
    from raytrain.data.layouts import detect_layout
    from raytrain.data.synthetic import EXPLANATIONS, FAKE_CATEGORIES, make_synthetic_dfr5
    from rewards.answer import parse_answer
    from rewards.outcome import format_reward
    from rewards.paragraphs import lean

    counts = make_synthetic_dfr5(tmp_path, num_train=6, num_test=6, seed=0, size=32)
    assert counts["splits"] == {"train": {"real": 3, "fake": 3}, "test": {"real": 3, "fake": 3}}
    assert detect_layout(tmp_path) == "llava"
    ingested = ingest(scan_sources([Source(tmp_path, name="synthetic")]))
    assert not ingested.rejects
    rows = ingested.rows
    assert {(r["domain"], r["split"], r["label"]) for r in rows} == {
        (d, s, lb) for d in FAKE_CATEGORIES for s in ("train", "test") for lb in ("real", "fake")}
    for r in rows:
        category = r["domain"] if r["label"] == "fake" else "camera"
        assert r["explanation"] == EXPLANATIONS[category] and r["media"] == "image" and r["width"] == 32
    for category, text in EXPLANATIONS.items():
        label = "real" if category == "camera" else "fake"
        target = f"{text}\n\n### Answer: {label}"
        assert parse_answer(target, "heading") == label and format_reward(target, "heading") == 0.0
        assert lean(text) == (1 if label == "real" else -1)  # PRPO's PCR agrees with the taught answer
    with pytest.raises(ValueError, match="multiples of 6"):
        make_synthetic_dfr5(tmp_path / "other", num_train=4, num_test=6)
