"""`python -m jobs.prepare_data` over every layout at once, on the shared local Ray; and the streaming
decoder meeting files that broke after preparation."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs import prepare_data
from raytrain.config.sections import DataConfig
from raytrain.data.ingest import Inspection, Source, ingest, scan_sources
from raytrain.data.manifest import MANIFEST_SCHEMA, read_manifest, write_manifest
from raytrain.data.pipeline import build_frame_dataset, split_rows
from raytrain.data.splits import leaking_groups
from tests.helpers import layout_trees

TREES = ("genbuster", "dfr5", "ffpp", "celebdf", "dfdc", "fakeavceleb", "clips_csv", "clips_folders")
SOURCES = ["genbuster", "dfr5", "ffpp", "celebdf", "dfdc", "fakeavceleb", "clips", "clips-clips_folders", "clips-zoo"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[list[Path], dict[str, str]]:
    base = tmp_path_factory.mktemp("sources")
    roots = [getattr(layout_trees, name)(base / name) for name in TREES]
    zoo = layout_trees.bad_input_zoo(base / "zoo")
    return roots + [base / "zoo"], zoo


def _args(roots, out, *extra):
    return [a for root in roots for a in ("--source", str(root))] + ["--output", str(out), *extra]


@pytest.fixture(scope="module")
def prepared(ray_local, sources, tmp_path_factory):
    roots, zoo = sources
    out = tmp_path_factory.mktemp("prepared")
    assert prepare_data.main(_args(roots, out, "--workers", "2", "--mix", "ffpp=2", "--mix", "dfr5=0.5")) == 0
    return out


@pytest.mark.slow  # the `prepared` fixture probes ~70 files through Ray Data (~25 s on 2 cores)
def test_outputs_and_summary(prepared, sources, capsys):
    roots, zoo = sources
    table = read_manifest(prepared / "manifest.parquet")
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    summary = json.loads((prepared / "summary.json").read_text())
    assert list(summary["sources"]) == SOURCES
    assert {r["source"] for r in rows} == set(SOURCES)
    # The summary's counts are the manifest's, per source x category x split x label.
    counts = Counter((r["source"], r["category"], r["split"], r["label"]) for r in rows)
    assert {(c["source"], c["category"], c["split"], c["label"]): c["count"] for c in summary["counts"]} == counts
    assert summary["rows"] == len(rows) == len({r["id"] for r in rows})
    # Probed: every row has its metadata.
    for r in rows:
        assert r["codec"] in ("h264", "png") and r["width"] == layout_trees.SIZE
        assert (r["duration"] is None) == (r["media"] == "image")
    assert summary["leaking_groups"] == {} and leaking_groups(rows) == {}

    mix = summary["training_mix"]
    assert mix["requested"] == {"dfr5": 0.5, "ffpp": 2.0}
    assert mix["label_share"] == {"fake": 0.5, "real": 0.5}
    assert mix["source_share"]["ffpp"] == pytest.approx(4 * mix["source_share"]["dfr5"], rel=0.02)
    train = [r for r in rows if r["split"] == "train"]
    assert np.mean([r["weight"] for r in train]) == pytest.approx(1.0)
    # The seed's train/val/test.jsonl: the manifest's rows, by split, one JSON object a line.
    for split in ("train", "val", "test"):
        lines = (prepared / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [r for r in rows if r["split"] == split]
    assert all(r["weight"] is None for r in rows if r["split"] != "train")


@pytest.mark.slow  # the `prepared` fixture probes ~70 files through Ray Data (~25 s on 2 cores)
def test_rejects_name_every_bad_file(prepared, sources):
    roots, zoo = sources
    rejects = pq.read_table(prepared / "rejects.parquet").to_pylist()
    assert all(set(r) == {"path", "source", "reason"} and r["reason"] for r in rejects)
    by_name = {os.path.basename(r["path"]): r for r in rejects}
    for name, words in zoo.items():
        assert by_name[name]["source"] == "clips-zoo" and words in by_name[name]["reason"], name
    for name in ("ghost.mp4", "eee.mp4", "unlisted.mp4", "id9_id0_0000.mp4", "missing.mp4", "d.mp4", "e.mp4"):
        assert name in by_name, name
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["rejects"] == len(rejects) and summary["duplicates"] == 1
    kept = {os.path.basename(p) for p in read_manifest(prepared / "manifest.parquet")["path"].to_pylist()}
    assert {"good.mp4", "good-fake.mp4", "good.png"} <= kept


def test_printed_table(ray_local, sources, tmp_path, capsys):
    roots, _ = sources
    assert prepare_data.main(_args(roots[2:3], tmp_path, "--workers", "2")) == 0
    out = capsys.readouterr().out
    assert "layout ffpp, source 'ffpp': 13 files" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["source", "category", "split", "label", "count"])
    table = read_manifest(tmp_path / "manifest.parquet").to_pylist()
    for line in lines[header + 1:header + 1 + len(json.loads((tmp_path / "summary.json").read_text())["counts"])]:
        source, category, split, label, count = line.split()
        assert int(count) == sum((r["category"], r["split"], r["label"]) == (category, split, label) for r in table)


def test_ray_tasks_inspect_as_this_process_does(ray_local, sources):
    """Results come back from the Ray Data tasks in any order; each still lands on its own entry."""
    roots, _ = sources
    scanned = scan_sources([Source(roots[-1]), Source(roots[TREES.index("dfdc")])])  # the bad input zoo, DFDC
    counts = []
    parallel = ingest(scanned, inspection=Inspection.RAY, workers=2, progress=counts.append)
    serial = ingest(scanned)
    assert parallel == serial and serial.unreadable and serial.rows
    assert sum(counts) == len(scanned.entries)


def test_same_seed_same_manifest(sources, tmp_path):
    roots, _ = sources
    runs = []
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert prepare_data.main(_args(roots, tmp_path / name, "--skip-processing", "--seed", seed)) == 0
        runs.append(read_manifest(tmp_path / name / "manifest.parquet"))
    assert runs[0].equals(runs[1])
    assert pq.read_table(tmp_path / "a" / "rejects.parquet").equals(pq.read_table(tmp_path / "b" / "rejects.parquet"))
    assert runs[0]["id"].to_pylist() == runs[2]["id"].to_pylist()
    assert runs[0]["split"].to_pylist() != runs[2]["split"].to_pylist()
    assert leaking_groups(runs[2].to_pylist()) == {}
    # Without probing nothing is decoded, but files that fail the cheap checks are still refused.
    assert runs[0]["codec"].null_count == runs[0].num_rows
    reasons = {os.path.basename(r["path"]): r["reason"]
               for r in pq.read_table(tmp_path / "a" / "rejects.parquet").to_pylist()}
    assert reasons["zero.mp4"] == "empty file (0 bytes)" and "broken symbolic link" in reasons["dangling.mp4"]


def test_flags_layout_and_max_videos(sources, tmp_path, capsys):
    roots, _ = sources
    ffpp = roots[2]
    assert prepare_data.main(_args([ffpp], tmp_path / "few", "--skip-processing", "--max-videos", "4",
                                   "--layout", "ffpp")) == 0
    few = read_manifest(tmp_path / "few" / "manifest.parquet")
    assert few.num_rows == 4
    more = read_manifest(prepare_and_read(ffpp, tmp_path / "more", "--max-videos", "6"))
    assert set(few["id"].to_pylist()) <= set(more["id"].to_pylist())
    # A forced layout names the source; an unknown --mix source or a bad flag stops with a message.
    assert prepare_data.main(_args([roots[0]], tmp_path / "x", "--skip-processing", "--mix", "nope=1")) == 2
    assert "--mix names unknown source(s) ['nope']" in capsys.readouterr().err
    assert prepare_data.main(_args([tmp_path / "missing"], tmp_path / "x", "--skip-processing")) == 2
    assert "dataset root not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_data.main(_args([ffpp], tmp_path / "x", "--mix", "ffpp"))


def prepare_and_read(root: Path, out: Path, *extra) -> Path:
    assert prepare_data.main(_args([root], out, "--skip-processing", *extra)) == 0
    return out / "manifest.parquet"


@pytest.mark.slow  # the `prepared` fixture probes ~70 files through Ray Data (~25 s on 2 cores)
def test_streaming_skips_files_broken_after_preparation(ray_local, prepared, tmp_path):
    """Files deleted, emptied or overwritten after preparation are skipped and counted; the rest decode."""
    table = read_manifest(prepared / "manifest.parquet")
    table = table.filter(pc.equal(table["source"], "dfdc")).drop_columns(["weight"])
    table = table.append_column("weight", pa.nulls(table.num_rows, pa.float64())).select(MANIFEST_SCHEMA.names)
    copies = tmp_path / "media"
    copies.mkdir()
    paths = []
    for path in table["path"].to_pylist():
        paths.append(str(copies / Path(path).name))
        Path(paths[-1]).write_bytes(Path(path).read_bytes())
    table = table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths))
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(["train"] * table.num_rows))
    write_manifest(table, tmp_path / "manifest.parquet")
    Path(paths[0]).unlink()
    Path(paths[1]).write_bytes(b"")
    Path(paths[2]).write_bytes(b"overwritten\n" * 50)

    data = DataConfig(manifest=tmp_path / "manifest.parquet", num_frames=4, max_pixels=32 * 32, min_pixels=28 * 28,
                      sample_fps=4.0, min_frames=2, max_frames=6)
    rows = split_rows(data, "train")
    seen = {}
    for batch in build_frame_dataset(data, rows).iter_batches(batch_size=None, batch_format="numpy"):
        for path, frames, error in zip(batch["path"], batch["frames"], batch["error"]):
            seen[path] = (frames.shape, error)
    assert set(seen) == set(paths)
    assert seen[paths[0]][1] == "file not found"
    assert seen[paths[1]][1] == "empty file (0 bytes)"
    assert seen[paths[2]][1].startswith("cannot decode video")
    for path in paths[3:]:
        shape, error = seen[path]
        # 3 frames at 4 fps sampled at 4 fps: 3 frames, within [2, 6]; 32x32 budgeted to 28x28.
        assert error == "" and shape == (3, 28, 28, 3), (path, shape, error)
