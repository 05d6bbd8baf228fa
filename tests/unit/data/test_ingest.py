"""One ingest for every caller (raytrain.data.ingest): the inspection strategies agree, sources are named and
ordered, and an evaluation folder keeps its copies; serially and in threads, no Ray (the Ray strategy is
compared with these in tests/e2e/test_prepare_data.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from raytrain.data.ingest import Inspection, Source, ingest, scan_sources
from tests.helpers import layout_trees

# What only decoding finds out: hashing alone leaves these out of a row.
PROBED = {"duration", "fps", "num_frames", "width", "height", "codec"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> list[Path]:
    """Two clip folders, ``z`` given before ``a``, the real clip of ``z`` copied into ``a``; and a DFDC tree
    (rejects while scanning, fakes grouped with their originals, an official test split)."""
    base = tmp_path_factory.mktemp("ingest")
    first, second = layout_trees.clips_folders(base / "z"), layout_trees.clips_folders(base / "a")
    shutil.copy(first / "real" / "r.mp4", second / "real" / "copy.mp4")
    return [first, second, layout_trees.dfdc(base / "dfdc")]


def test_serial_and_hash_only_agree_but_for_probed_metadata(roots):
    scanned = scan_sources([Source(root) for root in roots])
    serial = ingest(scanned, seed=3)
    counts = []
    hashed = ingest(scanned, inspection=Inspection.HASH_ONLY, workers=2, progress=counts.append, seed=3)
    assert len(serial.rows) == 12 and len(serial.rejects) == 4  # 13 files, one duplicate; three scan rejects
    assert hashed.rejects == serial.rejects
    assert all(set(s) - set(h) == PROBED for s, h in zip(serial.rows, hashed.rows))
    assert hashed.rows == [{k: v for k, v in row.items() if k not in PROBED} for row in serial.rows]
    assert serial.unreadable == hashed.unreadable == []
    assert sum(counts) == len(scanned.entries) == 13
    # Ingesting leaves the scan as it was: the second strategy saw what the first did.
    assert len(scanned.rejects) == 3 and "group" not in scanned.entries[0]


def test_sources_are_named_and_ordered_and_the_first_copy_wins(roots):
    heard = []
    scanned = scan_sources([Source(root) for root in roots],
                           on_source=lambda source, entries, rejects: heard.append((source, len(entries), len(rejects))))
    assert heard == [(Source(roots[0], "clips", "clips"), 3, 0), (Source(roots[1], "clips", "clips-a"), 4, 0),
                     (Source(roots[2], "dfdc", "dfdc"), 6, 3)]
    assert scanned.sources == [source for source, _, _ in heard]
    ingested = ingest(scanned)
    sources = [row["source"] for row in ingested.rows]
    assert sources == sorted(sources, key=["clips", "clips-a", "dfdc"].index)
    assert [r["path"] for r in ingested.rows if r["source"] == "dfdc"] == sorted(str(p) for p in roots[2].rglob("*.mp4")
                                                                                  if p.stem not in ("eee", "unlisted"))
    # The copy in the second source is dropped although its path sorts first.
    (duplicate,) = [r for r in ingested.rejects if r["reason"].startswith("exact duplicate")]
    assert duplicate == {"path": str(roots[1] / "real" / "copy.mp4"), "source": "clips-a",
                         "reason": f"exact duplicate of {roots[0] / 'real' / 'r.mp4'} (same content hash)"}
    assert [r["path"] for r in ingested.rejects] == sorted(r["path"] for r in ingested.rejects)
    assert {r["split"] for r in ingested.rows} <= {"train", "val", "test"}
    assert all("weight" not in r for r in ingested.rows) and ingested.table["weight"].null_count == len(ingested.rows)


def test_mix_sets_training_weights(roots):
    scanned = scan_sources([Source(root) for root in roots])
    rows = ingest(scanned, mix={"dfdc": 2.0}).rows
    train = [r for r in rows if r["split"] == "train"]
    assert train and np.mean([r["weight"] for r in train]) == pytest.approx(1.0)
    assert all(r["weight"] is None for r in rows if r["split"] != "train")
    assert sum(r["weight"] for r in train if r["label"] == "real") == pytest.approx(len(train) / 2)
    with pytest.raises(ValueError, match="unknown source"):
        ingest(scanned, mix={"nope": 1.0})


def test_max_files_is_a_stable_pick_per_source(roots):
    few = scan_sources([Source(root) for root in roots], max_files=2, seed=1)
    more = scan_sources([Source(root) for root in roots], max_files=3, seed=1)
    assert [e["source"] for e in few.entries] == ["clips", "clips", "clips-a", "clips-a", "dfdc", "dfdc"]
    assert {e["id"] for e in few.entries} < {e["id"] for e in more.entries}
    assert len(few.rejects) == len(more.rejects) == 3  # rejects are never sampled away


def test_an_evaluation_folder_keeps_copies_and_lists_unreadable_entries(roots, tmp_path):
    folder = tmp_path / "clips"
    shutil.copytree(roots[0], folder)
    shutil.copy(folder / "real" / "r.mp4", folder / "real" / "copy.mp4")
    (folder / "fake" / "broken.mp4").write_bytes(b"not a video")
    scanned = scan_sources([Source(folder, "clips", "folder")])
    ingested = ingest(scanned, split="test", deduplicate=False)
    assert sorted(Path(r["path"]).name for r in ingested.rows) == ["copy.mp4", "f.png", "l.mp4", "r.mp4"]
    assert {r["split"] for r in ingested.rows} == {"test"}
    (broken,) = ingested.unreadable
    assert (broken["path"], broken["label"], broken["source"]) == (str(folder / "fake" / "broken.mp4"), "fake", "folder")
    assert broken["reason"].startswith("cannot decode video") and broken["group"]
    assert ingested.rejects == [{"path": broken["path"], "source": "folder", "reason": broken["reason"]}]
    # By default one of the two goes: within a source, the one whose path sorts last.
    deduplicated = ingest(scanned)
    assert len(deduplicated.rows) == 3
    assert [Path(r["path"]).name for r in deduplicated.rejects if r["reason"].startswith("exact duplicate")] == ["r.mp4"]
