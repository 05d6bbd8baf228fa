"""Files outside a dataset folder (issue 17 item 7): a labels CSV naming `../../etc/passwd` or an absolute
path elsewhere, a symbolic link leaving the folder, a LLaVA list naming an image elsewhere are rejected
with the reason (into rejects.parquet) unless `--allow-outside-root`. No Ray (`--skip-processing`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import prepare_data
from raytrain.data.ingest import Source, scan_sources
from tests.helpers.layout_trees import _llava_item, write_image, write_video


@pytest.fixture
def hostile(tmp_path) -> dict[str, Path]:
    """A clips folder whose CSV names a file inside, `../../etc/passwd`, an absolute path to a clip
    elsewhere and a symbolic link to one; a label folder tree with a link leaving it; a LLaVA list."""
    elsewhere = tmp_path / "elsewhere"
    secret_clip = write_video(elsewhere / "secret.mp4", seed=1)
    linked = write_image(elsewhere / "linked.png", seed=2)
    clips = tmp_path / "clips"
    write_video(clips / "inside.mp4", seed=3)
    os.symlink(linked, clips / "link.png")
    (clips / "labels.csv").write_text(f"path,label\ninside.mp4,real\n{'../' * 20}etc/passwd,fake\n{secret_clip},fake\n"
                                      "link.png,real\n")
    folders = tmp_path / "folders"
    write_image(folders / "real" / "r.png", seed=4)
    (folders / "fake").mkdir()
    os.symlink(linked, folders / "fake" / "l.png")
    llava = tmp_path / "llava"
    write_image(llava / "in.png", seed=5)
    (llava / "train.json").write_text(json.dumps([
        _llava_item("in", "in.png", "**Cue**: fine. ### Answer: real", 0),
        _llava_item("out", str(linked), "**Cue**: odd. ### Answer: fake", 1),
    ]))
    return {"clips": clips, "folders": folders, "llava": llava, "secret": secret_clip, "linked": linked}


def _scan(root: Path, layout: str, **kw):
    scanned = scan_sources([Source(root, layout)], **kw)
    return {Path(e["path"]).name for e in scanned.entries}, {r["path"]: r["reason"] for r in scanned.rejects}


def test_clip_csv_paths_and_links_outside_the_root_are_rejected(hostile):
    entries, rejects = _scan(hostile["clips"], "clips")
    assert entries == {"inside.mp4"}
    assert "outside the dataset folder" in rejects[str(hostile["secret"])]
    assert "outside the dataset folder" in rejects["/etc/passwd"] and "labels.csv (line 3)" in rejects["/etc/passwd"]
    assert rejects[str(hostile["clips"] / "link.png")].startswith(f"a symbolic link to {hostile['linked']}")
    entries, rejects = _scan(hostile["clips"], "clips", allow_outside_root=True)
    assert entries == {"inside.mp4", "secret.mp4", "link.png"}
    assert "/etc/passwd" in rejects  # not a media file either way


def test_links_in_label_folders_and_llava_images_outside(hostile):
    entries, rejects = _scan(hostile["folders"], "clips")
    assert entries == {"r.png"} and "symbolic link" in rejects[str(hostile["folders"] / "fake" / "l.png")]
    entries, rejects = _scan(hostile["llava"], "llava")
    assert entries == {"in.png"} and "outside the dataset folder" in rejects[str(hostile["linked"])]
    assert _scan(hostile["llava"], "llava", allow_outside_root=True)[0] == {"in.png", "linked.png"}


def test_prepare_data_writes_them_to_rejects_unless_allowed(hostile, tmp_path):
    out = tmp_path / "out"
    assert prepare_data.main(["--source", str(hostile["clips"]), "--output", str(out), "--skip-processing"]) == 0
    rejects = {r["path"]: r["reason"] for r in pq.read_table(out / "rejects.parquet").to_pylist()}
    assert {str(hostile["secret"]), "/etc/passwd", str(hostile["clips"] / "link.png")} <= set(rejects)
    assert {Path(p).name for p in pq.read_table(out / "manifest.parquet")["path"].to_pylist()} == {"inside.mp4"}
    allowed = tmp_path / "allowed"
    assert prepare_data.main(["--source", str(hostile["clips"]), "--output", str(allowed), "--skip-processing",
                              "--allow-outside-root"]) == 0
    paths = set(pq.read_table(allowed / "manifest.parquet")["path"].to_pylist())
    assert {str(hostile["secret"]), str(hostile["clips"] / "link.png")} <= paths
