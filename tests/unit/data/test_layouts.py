"""Layout detection and scanning of every dataset shape in SPEC section 8 (raytrain.data.layouts), ingested
serially (raytrain.data.ingest), no Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raytrain.data.ingest import Source, ingest, scan_sources
from raytrain.data.layouts import LAYOUTS, detect_layout, scan_source
from raytrain.data.manifest import MANIFEST_SCHEMA
from raytrain.data.splits import leaking_groups
from tests.helpers import layout_trees

TREES = ("genbuster", "dfr5", "ffpp", "celebdf", "dfdc", "fakeavceleb", "clips_csv", "clips_folders")


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    return {name: getattr(layout_trees, name)(base / name) for name in TREES}


@pytest.fixture(scope="module")
def scanned(trees) -> dict[str, tuple[dict[str, dict], dict[str, str]]]:
    """layout tree -> ({path relative to its root: row}, {relative path: reject reason})."""
    out = {}
    for name, root in trees.items():
        ingested = ingest(scan_sources([Source(root)]))
        table, rejects = ingested.table, ingested.rejects
        assert table.schema.equals(MANIFEST_SCHEMA)
        rows = {str(Path(r["path"]).relative_to(root)): r for r in table.to_pylist()}
        out[name] = rows, {str(Path(r["path"]).relative_to(root)): r["reason"] for r in rejects}
    return out


def _view(rows: dict[str, dict], *fields: str) -> dict[str, tuple]:
    return {path: tuple(r[f] for f in fields) for path, r in rows.items()}


def test_each_layout_is_recognised(trees):
    expected = {"clips_csv": "clips", "clips_folders": "clips"}
    for name, root in trees.items():
        assert detect_layout(root) == expected.get(name, name)
    assert set(LAYOUTS) == {"genbuster", "dfr5", "ffpp", "celebdf", "dfdc", "fakeavceleb", "clips", "clips-fake", "clips-real", "llava"}


def test_every_layout_is_leak_free_and_complete(scanned):
    for name, (rows, _) in scanned.items():
        assert rows, name
        assert leaking_groups(list(rows.values())) == {}, name
        assert len({r["id"] for r in rows.values()}) == len(rows)
        for row in rows.values():
            assert row["label"] in ("real", "fake") and row["split"] in ("train", "val", "test")
            assert (row["category"] == "real") == (row["label"] == "real"), row
            assert row["num_frames"] >= 1 and row["width"] == row["height"] == layout_trees.SIZE
            assert row["codec"] in ("h264", "png") and len(row["content_hash"]) == 64


def test_genbuster(scanned):
    rows, rejects = scanned["genbuster"]
    assert rejects == {}
    assert _view(rows, "label", "category", "split", "domain") == {
        f"{s}/{path}": (label, cat, s, domain)
        for s in ("train", "test")
        for path, label, cat, domain in (
            (f"real/{s}-r1.mp4", "real", "real", ""), (f"real/{s}-r2.mp4", "real", "real", ""),
            (f"fake/text-to-video/{s}-f1.mp4", "fake", "text-to-video", ""),
            (f"fake/sora/{s}-f2.mp4", "fake", "unknown", "sora"))
    }
    assert rows["train/real/train-r1.mp4"]["watermark"] is True
    assert rows["train/real/train-r2.mp4"]["watermark"] is None
    assert rows["train/real/train-r1.mp4"]["duration"] == pytest.approx(0.75)  # 3 frames at 4 fps


def test_dfr5_domains_and_official_splits(scanned):
    rows, rejects = scanned["dfr5"]
    assert rejects == {}
    assert len(rows) == 12
    for path, row in rows.items():
        domain, split, label, _ = path.split("/")
        assert (row["domain"], row["split"], row["label"], row["media"]) == (domain, split, label, "image")
        assert row["category"] == ("real" if label == "real" else "image-generation")


def test_ffpp_methods_and_source_clips(scanned):
    rows, rejects = scanned["ffpp"]
    assert rejects == {}
    assert not any("masks" in p for p in rows)
    fakes = {p.split("/")[1] + "/" + Path(p).stem: r["category"] for p, r in rows.items() if r["label"] == "fake"}
    assert fakes == {
        "Deepfakes/000_003": "face-swap", "Deepfakes/003_000": "face-swap", "FaceSwap/000_003": "face-swap",
        "FaceShifter/001_002": "face-swap", "Face2Face/001_002": "face-reenactment",
        "Face2Face/004_005": "face-reenactment", "NeuralTextures/002_001": "face-reenactment"}
    assert all(r["category"] == "real" for p, r in rows.items() if p.startswith("original_sequences"))
    # 000_003 joins originals 000 and 003; 002_001 and 001_002 join 001 and 002; 004_005 joins 004 and 005.
    by_original = {Path(p).stem: r for p, r in rows.items() if p.startswith("original_sequences")}
    assert by_original["000"]["group"] == by_original["003"]["group"]
    assert by_original["001"]["group"] == by_original["002"]["group"] != by_original["000"]["group"]
    assert by_original["004"]["group"] == by_original["005"]["group"]
    assert len({r["group"] for r in rows.values()}) == 3
    for path, row in rows.items():
        for vid in Path(path).stem.split("_"):
            assert row["split"] == by_original[vid]["split"] and row["group"] == by_original[vid]["group"]


def test_ffpp_official_split_files_win(trees, tmp_path):
    root = tmp_path / "ffpp"
    layout_trees.ffpp(root)
    (root / "splits").mkdir()
    (root / "splits" / "test.json").write_text('[["000", "003"]]')
    (root / "splits" / "val.json").write_text('[["004", "005"]]')
    (root / "splits" / "train.json").write_text('[["001", "002"]]')
    rows = ingest(scan_sources([Source(root)])).rows
    expected = {"000": "test", "003": "test", "004": "val", "005": "val", "001": "train", "002": "train"}
    for row in rows:
        assert row["split"] == expected[Path(row["path"]).stem.split("_")[0]], row["path"]


def test_celebdf_official_test_list_and_identity_pairs(scanned):
    rows, rejects = scanned["celebdf"]
    assert _view(rows, "label", "split") == {
        "Celeb-real/id0_0000.mp4": ("real", "train"), "Celeb-real/id0_0001.mp4": ("real", "train"),
        "Celeb-real/id1_0000.mp4": ("real", "test"),
        "Celeb-synthesis/id0_id1_0000.mp4": ("fake", "train"), "Celeb-synthesis/id0_id1_0001.mp4": ("fake", "train"),
        "Celeb-synthesis/id1_id0_0000.mp4": ("fake", "test"),
        "YouTube-real/00000.mp4": ("real", "test"), "YouTube-real/00001.mp4": ("real", "train"),
    }
    assert {r["category"] for r in rows.values() if r["label"] == "fake"} == {"face-swap"}
    # The pair id0/id1 ties both of its fakes to both real clips of id0.
    pair = {rows[p]["group"] for p in ("Celeb-real/id0_0000.mp4", "Celeb-real/id0_0001.mp4",
                                        "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id0_id1_0001.mp4")}
    assert len(pair) == 1
    assert rows["Celeb-synthesis/id1_id0_0000.mp4"]["group"] == rows["Celeb-real/id1_0000.mp4"]["group"]
    assert rejects == {"Celeb-synthesis/id9_id0_0000.mp4": "listed in List_of_testing_videos.txt but the file does not exist"}


def test_dfdc_labels_originals_and_rejects(scanned):
    rows, rejects = scanned["dfdc"]
    assert _view(rows, "label", "category", "split") == {
        "dfdc_train_part_0/aaa.mp4": ("fake", "face-swap", rows["dfdc_train_part_0/bbb.mp4"]["split"]),
        "dfdc_train_part_0/bbb.mp4": ("real", "real", rows["dfdc_train_part_0/bbb.mp4"]["split"]),
        "dfdc_train_part_0/ccc.mp4": ("fake", "face-swap", rows["dfdc_train_part_0/bbb.mp4"]["split"]),
        "dfdc_train_part_0/ddd.mp4": ("real", "real", rows["dfdc_train_part_0/ddd.mp4"]["split"]),
        "dfdc_train_part_1/fff.mp4": ("real", "real", "test"),
        "dfdc_train_part_1/ggg.mp4": ("fake", "face-swap", "test"),
    }
    assert rows["dfdc_train_part_0/aaa.mp4"]["group"] == rows["dfdc_train_part_0/bbb.mp4"]["group"]
    assert rejects == {
        "dfdc_train_part_0/ghost.mp4": "listed in metadata.json but the file does not exist",
        "dfdc_train_part_0/eee.mp4": "metadata.json gives label 'MAYBE', not REAL or FAKE",
        "dfdc_train_part_0/unlisted.mp4": "not listed in metadata.json, so it has no label",
    }


def test_fakeavceleb_folders_and_methods(scanned):
    rows, rejects = scanned["fakeavceleb"]
    assert rejects == {}
    assert {Path(p).name: (r["label"], r["category"]) for p, r in rows.items()} == {
        "00109.mp4": ("real", "real"),
        "00200.mp4": ("real", "real"),
        "00109_id00166_faceswap.mp4": ("fake", "face-swap"),
        "00109_2_id00166_wavtolip.mp4": ("fake", "lip-sync"),
        "00109_7.mp4": ("fake", "lip-sync"),  # Wav2Lip according to meta_data.csv
        "00109_fake.mp4": ("fake", "lip-sync"),  # fake audio alone
        "00109_id00166_fsgan-wavtolip.mp4": ("fake", "face-swap"),
    }
    groups = {Path(p).name: r["group"] for p, r in rows.items()}
    assert len({g for n, g in groups.items() if n != "00200.mp4"}) == 1
    assert groups["00200.mp4"] != groups["00109.mp4"]


def test_clips_from_csv(scanned):
    rows, rejects = scanned["clips_csv"]
    assert _view(rows, "label", "category") == {
        "clips/a.mp4": ("real", "real"), "clips/b.mp4": ("fake", "lip-sync"), "clips/c.mp4": ("fake", "face-swap")}
    assert rejects == {
        "clips/missing.mp4": "listed in labels.csv (line 5) but the file does not exist",
        "clips/d.mp4": "labels.csv line 6: label 'maybe' is not real or fake",
        "clips/e.mp4": "not listed in labels.csv, so it has no label",
    }


def test_clips_from_folders(scanned):
    rows, rejects = scanned["clips_folders"]
    assert rejects == {}
    assert _view(rows, "label", "category", "media") == {
        "real/r.mp4": ("real", "real", "video"), "fake/lip-sync/l.mp4": ("fake", "lip-sync", "video"),
        "fake/f.png": ("fake", "unknown", "image")}


def test_layout_can_be_forced_and_errors_name_the_folder(trees, tmp_path):
    entries, _ = scan_source(trees["clips_folders"], "genbuster", "mine")
    assert {e["source"] for e in entries} == {"mine"} and all(e["official_split"] is None for e in entries)
    with pytest.raises(ValueError, match="unknown layout 'nope'"):
        scan_source(trees["dfr5"], "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}: no known dataset layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_source(tmp_path / "nowhere")


def test_bad_input_zoo_is_rejected_with_reasons(tmp_path):
    root = tmp_path / "zoo"
    expected = layout_trees.bad_input_zoo(root)
    ingested = ingest(scan_sources([Source(root)]))
    table, rejects = ingested.table, ingested.rejects
    reasons = {os.path.basename(r["path"]): r["reason"] for r in rejects}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
        assert "Traceback" not in reasons[name] and "/github/" not in reasons[name]
    kept = {Path(p).name for p in table["path"].to_pylist()}
    # Nothing usable is dropped: the good files, and the locked one where this user can still read it.
    assert kept == {"good.mp4", "good-fake.mp4", "good.png"} | ({"locked.mp4"} if "locked.mp4" not in expected else set())
