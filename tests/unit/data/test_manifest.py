"""Manifest schema, GenBuster scanning and rejects (raytrain.data.manifest)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raytrain.data.ingest import Source, ingest, scan_sources
from raytrain.data.manifest import MANIFEST_SCHEMA, normalise_category, read_manifest, stable_id, write_manifest
from raytrain.data.synthetic import make_synthetic_dataset


def scan_genbuster(root, source=None) -> tuple[pa.Table, list[dict]]:
    ingested = ingest(scan_sources([Source(root, "genbuster", source)]))
    return ingested.table, ingested.rejects


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("genbuster")
    make_synthetic_dataset(root, num_train=12, num_test=6, seed=1)
    return root


@pytest.fixture
def flat(tmp_path, synthetic) -> Path:
    """No split folders, a fake directly under fake/, an odd subcategory name and three broken files."""
    root = tmp_path / "flat"
    video, other = sorted(synthetic.rglob("*.mp4"))[:2]
    (root / "real").mkdir(parents=True)
    (root / "fake" / "Face_Swap Pro").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(root / "real" / "a.png")
    shutil.copy(video, root / "real" / "b.mp4")
    shutil.copy(other, root / "fake" / "Face_Swap Pro" / "c.MP4")
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(root / "fake" / "d.jpg")
    (root / "fake" / "notes.txt").write_text("not media")
    (root / "fake" / "empty.mp4").write_bytes(b"")
    (root / "fake" / "truncated.mp4").write_bytes(video.read_bytes()[:300])
    (root / "fake" / "text.mp4").write_text("just some text\n")
    return root


def test_schema_columns_and_types(synthetic):
    table, rejects = scan_genbuster(synthetic, source="synthetic")
    assert rejects == []
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.schema.field("fps").type == pa.float64()
    assert table.schema.field("num_frames").type == pa.int64()
    assert table.schema.field("watermark").type == pa.bool_()
    assert table.num_rows == 18


def test_labels_categories_splits_from_layout(synthetic):
    rows = scan_genbuster(synthetic, source="synthetic")[0].to_pylist()
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    for row in rows:
        rel = Path(row["path"]).relative_to(synthetic).parts
        assert (row["split"], row["label"]) == rel[:2]
        assert row["category"] == ("real" if row["label"] == "real" else rel[2])
        assert row["source"] == "synthetic" and row["domain"] == ""
        assert Path(row["path"]).is_absolute()
        assert row["content_hash"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
        assert row["width"] == row["height"] == 56
        if row["media"] == "video":
            assert (row["fps"], row["num_frames"]) == (8.0, 8)
        else:
            assert (row["fps"], row["num_frames"]) == (None, 1)
    assert {r["split"] for r in rows} == {"train", "test"}
    assert {r["category"] for r in rows if r["label"] == "fake"} == {"face-swap", "lip-sync", "text-to-video"}


def test_watermarks_come_from_metadata(synthetic):
    rows = scan_genbuster(synthetic)[0].to_pylist()
    assert {r["watermark"] for r in rows} == {True, False}
    assert all(any(r["watermark"] for r in rows if r["label"] == lb) for lb in ("real", "fake"))


def test_ids_are_stable(synthetic, tmp_path):
    first = scan_genbuster(synthetic, source="synthetic")[0]
    moved = tmp_path / "moved"
    shutil.copytree(synthetic, moved)
    again = scan_genbuster(moved, source="synthetic")[0]
    assert first.column("id").to_pylist() == again.column("id").to_pylist()
    row = first.slice(0, 1).to_pylist()[0]
    rel = Path(row["path"]).relative_to(synthetic).as_posix()
    assert row["id"] == stable_id("synthetic", rel)
    assert row["id"] == hashlib.sha1(f"synthetic:{rel}".encode()).hexdigest()[:16]
    assert len(set(first.column("id").to_pylist())) == first.num_rows
    assert stable_id("other", rel) != row["id"]


def test_flat_layout_and_rejects(flat):
    table, rejects = scan_genbuster(flat)
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert set(rows) == {"a.png", "b.mp4", "c.MP4", "d.jpg"}
    # No split folders: each file is its own source clip, split by a hash of it.
    assert {r["split"] for r in rows.values()} <= {"train", "val", "test"}
    assert rows["a.png"]["category"] == rows["b.mp4"]["category"] == "real"
    # Not one of SPEC section 8's categories: unknown, the folder kept as domain.
    assert rows["c.MP4"]["category"] == "unknown" and rows["c.MP4"]["domain"] == "face-swap-pro"
    assert rows["c.MP4"]["media"] == "video"
    assert rows["d.jpg"]["category"] == "unknown" and rows["d.jpg"]["media"] == "image"
    assert (rows["a.png"]["width"], rows["a.png"]["height"]) == (48, 32)
    assert rows["a.png"]["watermark"] is None  # no metadata.jsonl

    reasons = {Path(r["path"]).name: r["reason"] for r in rejects}
    assert set(reasons) == {"empty.mp4", "truncated.mp4", "text.mp4", "notes.txt"}
    assert reasons["notes.txt"].startswith("unsupported file type '.txt'")
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["truncated.mp4"].startswith("cannot decode video: ")
    assert reasons["text.mp4"].startswith("cannot decode video: ")
    assert all(Path(r["path"]).is_absolute() for r in rejects)


def test_normalise_category():
    assert normalise_category("Face_Swap") == "face-swap"
    assert normalise_category(" Lip Sync ") == "lip-sync"
    assert normalise_category("text-to-video") == "text-to-video"


def test_bad_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_genbuster(tmp_path / "nowhere")
    (tmp_path / "videos").mkdir()
    with pytest.raises(ValueError, match=str(tmp_path)):
        scan_genbuster(tmp_path)


def test_write_read_roundtrip(synthetic, tmp_path):
    table = scan_genbuster(synthetic)[0]
    path = tmp_path / "sub" / "manifest.parquet"
    write_manifest(table, path)
    assert read_manifest(path).equals(table)


def test_read_names_missing_column(synthetic, tmp_path):
    table = scan_genbuster(synthetic)[0].drop_columns(["label"])
    path = tmp_path / "broken.parquet"
    pq.write_table(table, path)
    with pytest.raises(ValueError) as info:
        read_manifest(path)
    assert "label" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ValueError, match="label"):
        write_manifest(table, tmp_path / "never.parquet")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "absent.parquet")


def test_read_fills_optional_columns_of_older_manifests(synthetic, tmp_path):
    table = scan_genbuster(synthetic)[0]
    path = tmp_path / "old.parquet"
    pq.write_table(table.drop_columns(["duration", "codec", "weight"]), path)
    read = read_manifest(path)
    assert set(read.column_names) == set(table.column_names)
    assert read["weight"].null_count == read["codec"].null_count == table.num_rows
    assert read["id"].to_pylist() == table["id"].to_pylist()
