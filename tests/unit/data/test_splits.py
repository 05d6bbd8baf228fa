"""Groups, leak-free splits, duplicates, balance and mixing (raytrain.data.splits): hand-computed cases, no Ray."""

from __future__ import annotations

import itertools

import pytest

from raytrain.data.splits import (
    assign_groups,
    assign_splits,
    balance_weights,
    drop_duplicates,
    format_table,
    leaking_groups,
    reason_kind,
    stable_sample,
    summarise,
)


def _entry(id_, clips, **kw):
    return {"id": id_, "path": f"/d/{id_}", "clips": clips, **kw}


def test_groups_join_shared_clips_in_any_order():
    entries = [_entry("f1", ["b", "c"]), _entry("r1", ["a"]), _entry("f2", ["a", "b"]), _entry("r2", ["d"]),
               _entry("f3", ["c"])]
    for perm in itertools.permutations(entries):
        groups = {e["id"]: e["group"] for e in assign_groups(list(perm))}
        assert groups == {"f1": "a", "r1": "a", "f2": "a", "f3": "a", "r2": "d"}


def _rows(groups: dict[str, list[str | None]]) -> list[dict]:
    """{group: [official split per file]} -> rows."""
    return [{"id": f"{g}{i}", "group": g, "official_split": s, "label": "real", "source": "s"}
            for g, splits in groups.items() for i, s in enumerate(splits)]


def test_official_split_wins_and_the_group_follows_it():
    rows = assign_splits(_rows({"g1": ["test", None, None], "g2": [None, "val"], "g3": ["train", "test", None]}))
    got = {r["id"]: r["split"] for r in rows}
    assert got == {"g10": "test", "g11": "test", "g12": "test", "g20": "val", "g21": "val",
                   # The dataset itself puts g3 in two splits: its files keep them, the rest go held-out.
                   "g30": "train", "g31": "test", "g32": "test"}
    assert leaking_groups(rows) == {"g3": ["test", "train"]}


def test_hash_splits_are_deterministic_grouped_and_stable():
    rows = _rows({f"g{i}": [None, None] for i in range(400)})
    first = assign_splits(rows, seed=3)
    assert first == assign_splits(rows, seed=3)
    assert leaking_groups(first) == {}
    counts = {s: sum(r["split"] == s for r in first) / len(first) for s in ("train", "val", "test")}
    assert counts["train"] == pytest.approx(0.8, abs=0.06) and counts["test"] == pytest.approx(0.1, abs=0.04)
    # A group never moves because other groups were added or removed.
    fewer = assign_splits(rows[:100], seed=3)
    assert [r["split"] for r in fewer] == [r["split"] for r in first[:100]]
    other = assign_splits(rows, seed=4)
    assert [r["split"] for r in other] != [r["split"] for r in first]
    custom = assign_splits(rows, seed=3, ratios=(("train", 1.0), ("test", 0.0)))
    assert {r["split"] for r in custom} == {"train"}


def test_duplicates_kept_once_and_label_conflicts_rejected():
    rows = [
        {"path": "/a/1.mp4", "source": "a", "label": "real", "content_hash": "h1"},
        {"path": "/b/1.mp4", "source": "b", "label": "real", "content_hash": "h1"},
        {"path": "/a/2.mp4", "source": "a", "label": "fake", "content_hash": "h2"},
        {"path": "/a/3.mp4", "source": "a", "label": "real", "content_hash": "h3"},
        {"path": "/b/3.mp4", "source": "b", "label": "fake", "content_hash": "h3"},
    ]
    kept, dropped = drop_duplicates(rows)
    assert [r["path"] for r in kept] == ["/a/1.mp4", "/a/2.mp4"]
    assert dropped == [
        {"path": "/b/1.mp4", "source": "b", "reason": "exact duplicate of /a/1.mp4 (same content hash)"},
        {"path": "/a/3.mp4", "source": "a",
         "reason": "label conflict: labelled real here, but the same content is /b/3.mp4 (fake)"},
        {"path": "/b/3.mp4", "source": "b",
         "reason": "label conflict: labelled fake here, but the same content is /a/3.mp4 (real)"},
    ]


def _train(cells: dict[tuple[str, str], int]) -> list[dict]:
    return [{"source": s, "label": lb, "split": "train"} for (s, lb), n in cells.items() for _ in range(n)]


def _weights(rows):
    return {(r["source"], r["label"]): round(r["weight"], 4) for r in rows}


def test_balance_hand_cases():
    cells = {("A", "real"): 2, ("A", "fake"): 2, ("B", "real"): 1, ("B", "fake"): 3}
    # Equal sources, 50/50 labels: each (source, label) cell carries 1/4 of the draws; 8 rows, mean weight 1.
    assert _weights(balance_weights(_train(cells))) == {
        ("A", "real"): 1.0, ("A", "fake"): 1.0, ("B", "real"): 2.0, ("B", "fake"): 0.6667}
    # A mixed 3:1 against B: A's cells 3/8 each, B's 1/8 each.
    assert _weights(balance_weights(_train(cells), {"A": 3, "B": 1})) == {
        ("A", "real"): 1.5, ("A", "fake"): 1.5, ("B", "real"): 1.0, ("B", "fake"): 0.3333}
    # Weight 0 leaves a source out of training.
    assert _weights(balance_weights(_train(cells), {"B": 0})) == {
        ("A", "real"): 2.0, ("A", "fake"): 2.0, ("B", "real"): 0.0, ("B", "fake"): 0.0}


def test_balance_with_a_one_label_source_keeps_labels_even():
    rows = balance_weights(_train({("A", "real"): 4, ("A", "fake"): 1, ("B", "fake"): 5}) + [
        {"source": "A", "label": "real", "split": "test"}])
    train = [r for r in rows if r["split"] == "train"]
    assert sum(r["weight"] for r in train) == pytest.approx(len(train))
    assert sum(r["weight"] for r in train if r["label"] == "real") == pytest.approx(len(train) / 2, rel=1e-6)
    assert rows[-1]["weight"] is None  # only the training split is weighted
    summary = summarise([{**r, "category": "c", "group": "g"} for r in rows], [])
    assert summary["training_mix"]["label_share"] == {"fake": 0.5, "real": 0.5}


def test_balance_refuses_bad_mixes():
    rows = _train({("A", "real"): 1, ("A", "fake"): 1})
    with pytest.raises(ValueError, match="unknown source"):
        balance_weights(rows, {"Z": 1})
    with pytest.raises(ValueError, match=">= 0"):
        balance_weights(rows, {"A": -1})
    with pytest.raises(ValueError, match="nothing to train on"):
        balance_weights(rows, {"A": 0})


def test_stable_sample_grows_without_reshuffling():
    entries = [{"id": f"e{i}"} for i in range(50)]
    five, ten = stable_sample(entries, 5, seed=1), stable_sample(entries, 10, seed=1)
    assert ten[:5] == five and len({e["id"] for e in ten}) == 10
    assert stable_sample(list(reversed(entries)), 5, seed=1) == five
    assert stable_sample(entries, 5, seed=2) != five


def test_summary_counts_and_table():
    rows = [
        {"source": "ffpp", "category": "face-swap", "split": "train", "label": "fake", "group": "g1", "weight": 1.0},
        {"source": "ffpp", "category": "face-swap", "split": "train", "label": "fake", "group": "g1", "weight": 1.0},
        {"source": "ffpp", "category": "real", "split": "train", "label": "real", "group": "g1", "weight": 2.0},
        {"source": "ffpp", "category": "real", "split": "test", "label": "real", "group": "g2", "weight": None},
    ]
    rejects = [{"path": "/x", "source": "ffpp", "reason": "empty file (0 bytes)"},
               {"path": "/y", "source": "ffpp", "reason": "exact duplicate of /z (same content hash)"}]
    summary = summarise(rows, rejects, mix={"ffpp": 1.0}, seed=5)
    assert summary["counts"] == [
        {"source": "ffpp", "category": "face-swap", "split": "train", "label": "fake", "count": 2},
        {"source": "ffpp", "category": "real", "split": "test", "label": "real", "count": 1},
        {"source": "ffpp", "category": "real", "split": "train", "label": "real", "count": 1},
    ]
    assert (summary["rows"], summary["rejects"], summary["duplicates"], summary["seed"]) == (4, 2, 1, 5)
    assert summary["reject_reasons"] == {"empty file …": 1, "exact duplicate of …": 1}
    assert summary["training_mix"]["label_share"] == {"fake": 0.5, "real": 0.5}
    assert summary["leaking_groups"] == {}
    table = format_table(summary).splitlines()
    assert table[0].split() == ["source", "category", "split", "label", "count"]
    assert table[1].split() == ["ffpp", "face-swap", "train", "fake", "2"]
    assert table[4].startswith("4 files, 2 rejected (1 duplicates)")


def test_reason_kinds_group_alike_rejects():
    assert reason_kind("listed in labels.csv (line 5) but the file does not exist") == \
        "listed in labels.csv … but the file does not exist"
    assert reason_kind("resolution 8000x5000 is larger than 8K (33177600 pixels per frame)") == \
        reason_kind("resolution 9000x9000 is larger than 8K (33177600 pixels per frame)")
    assert reason_kind("metadata.json gives label 'MAYBE', not REAL or FAKE") == "metadata.json gives label …, not REAL or FAKE"
