"""Row order (split_rows) and the Ray Data decode pipeline with broken files (raytrain.data.pipeline)."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raytrain.config import parse_config
from raytrain.data.manifest import read_manifest, stable_id, write_manifest
from raytrain.data.pipeline import prompts_from_batch, split_rows
from raytrain.models.loading import load_processor
from raytrain.models.prompts import build_dataset

# ---------------------------------------------------------------- split_rows (no Ray)


@pytest.fixture
def cfg(base_config_dict):
    return parse_config(base_config_dict)


def _keys(table: pa.Table) -> list[str]:
    return table["key"].to_pylist()


def test_split_rows_keys_and_split(cfg):
    manifest = read_manifest(cfg.data.manifest)
    train_ids = set(manifest.filter(pc.equal(manifest["split"], "train"))["id"].to_pylist())
    rows = split_rows(cfg.data, "train", epochs=2, seed=0)
    assert rows.num_rows == 2 * len(train_ids)
    assert set(rows["split"].to_pylist()) == {"train"}
    for epoch in (0, 1):
        part = [k for k in _keys(rows) if k.startswith(f"{epoch}:")]
        assert sorted(part) == sorted(f"{epoch}:{i}" for i in train_ids)
    assert all(k == f"{k.split(':')[0]}:{i}" for k, i in zip(_keys(rows), rows["id"].to_pylist()))
    # Epochs come one after the other.
    assert [k.split(":")[0] for k in _keys(rows)] == ["0"] * len(train_ids) + ["1"] * len(train_ids)
    test = split_rows(cfg.data, "test")
    assert set(test["split"].to_pylist()) == {"test"}
    assert not set(test["id"].to_pylist()) & train_ids


def test_split_rows_deterministic_per_seed(cfg):
    a = split_rows(cfg.data, "train", epochs=3, seed=7)
    b = split_rows(cfg.data, "train", epochs=3, seed=7)
    assert _keys(a) == _keys(b)
    assert a.equals(b)
    other = split_rows(cfg.data, "train", epochs=3, seed=8)
    assert _keys(other) != _keys(a)
    # The same seed gives the same epoch-0 order however many epochs follow.
    n = split_rows(cfg.data, "train", seed=7).num_rows
    assert _keys(split_rows(cfg.data, "train", epochs=1, seed=7)) == _keys(a)[:n]


def test_split_rows_epochs_differ(cfg):
    rows = split_rows(cfg.data, "train", epochs=3, seed=0)
    n = rows.num_rows // 3
    orders = [rows["id"].to_pylist()[e * n:(e + 1) * n] for e in range(3)]
    assert orders[0] != orders[1] and orders[1] != orders[2] and orders[0] != orders[2]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(orders[2])


def test_split_rows_exclude(cfg):
    rows = split_rows(cfg.data, "train", epochs=2, seed=3)
    keys = _keys(rows)
    exclude = frozenset(keys[::3] + ["5:not-a-row"])
    kept = split_rows(cfg.data, "train", epochs=2, seed=3, exclude=exclude)
    # Exactly the excluded keys are gone; the rest keep their order.
    assert _keys(kept) == [k for k in keys if k not in exclude]
    assert kept.num_rows == rows.num_rows - len(keys[::3])
    everything = split_rows(cfg.data, "train", epochs=2, seed=3, exclude=frozenset(keys[:-1]))
    assert _keys(everything) == keys[-1:]


def test_split_rows_max_rows_and_empty_split(cfg):
    small = cfg.data.model_copy(update={"max_rows": 3})
    assert split_rows(small, "train").num_rows == 3
    with pytest.raises(ValueError, match="no rows"):
        split_rows(cfg.data, "validation")


def test_split_rows_draws_by_weight(cfg, tmp_path):
    """Training weights of jobs.prepare_data: draws with replacement in proportion, unique keys, seeded."""
    table = read_manifest(cfg.data.manifest)
    weights = [0.0 if label == "fake" else (3.0 if i % 2 else 1.0)
               for i, label in enumerate(table["label"].to_pylist())]
    weighted = table.set_column(table.schema.get_field_index("weight"), "weight", pa.array(weights, pa.float64()))
    write_manifest(weighted, tmp_path / "weighted.parquet")
    data = cfg.data.model_copy(update={"manifest": tmp_path / "weighted.parquet"})
    rows = split_rows(data, "train", epochs=40, seed=1)
    n_train = sum(s == "train" for s in table["split"].to_pylist())
    assert rows.num_rows == 40 * n_train
    assert set(rows["label"].to_pylist()) == {"real"}  # weight 0: never drawn
    assert len(set(_keys(rows))) == rows.num_rows
    assert all(k.split(":")[1] == i for k, i in zip(_keys(rows), rows["id"].to_pylist()))
    w = dict(zip(table["id"].to_pylist(), weights))
    drawn = rows["id"].to_pylist()
    heavy = sum(w[i] == 3.0 for i in drawn) / sum(w[i] == 1.0 for i in drawn)
    n_heavy, n_light = (sum(w[i] == v and s == "train" for i, s in zip(w, table["split"].to_pylist())) for v in (3.0, 1.0))
    assert heavy == pytest.approx(3.0 * n_heavy / n_light, rel=0.2)
    assert _keys(split_rows(data, "train", epochs=2, seed=1)) == _keys(rows)[:2 * n_train]
    # Equal weights are the plain permutation: nothing changes for unweighted manifests.
    flat = table.set_column(table.schema.get_field_index("weight"), "weight", pa.array([2.0] * table.num_rows))
    write_manifest(flat, tmp_path / "flat.parquet")
    same = split_rows(cfg.data.model_copy(update={"manifest": tmp_path / "flat.parquet"}), "train", seed=4)
    assert _keys(same) == _keys(split_rows(cfg.data, "train", seed=4))


# ---------------------------------------------------------------- decoding with Ray Data


@pytest.fixture
def broken_cfg(base_config_dict, synthetic_dir, tmp_path):
    """The synthetic manifest plus four unusable train rows; returns (cfg, {path: kind})."""
    table = read_manifest(synthetic_dir / "manifest.parquet")
    rows = table.to_pylist()
    video = next(r for r in rows if r["media"] == "video" and r["split"] == "train")
    real_bytes = open(video["path"], "rb").read()

    bad_dir = tmp_path / "broken"
    bad_dir.mkdir()
    files = {
        "missing": bad_dir / "missing.mp4",
        "empty": bad_dir / "empty.mp4",
        "truncated": bad_dir / "truncated.mp4",
        "text": bad_dir / "text.mp4",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(real_bytes[:300])
    files["text"].write_text("this is not a video\n" * 20)

    extra = []
    for kind, path in files.items():
        row = copy.deepcopy(video)
        row["id"] = stable_id("broken", kind)
        row["path"] = str(path)
        extra.append(row)
    broken = pa.concat_tables([table, pa.Table.from_pylist(extra, schema=table.schema)])
    manifest = tmp_path / "broken-manifest.parquet"
    write_manifest(broken, manifest)

    raw = copy.deepcopy(base_config_dict)
    raw["data"]["manifest"] = str(manifest)
    return parse_config(raw), {str(p): kind for kind, p in files.items()}


def test_pipeline_decodes_good_rows_and_lists_bad_ones(ray_local, broken_cfg):
    cfg, bad = broken_cfg
    rows = split_rows(cfg.data, "train")
    all_rows = {r["key"]: r for r in rows.to_pylist()}
    assert len(all_rows) == 16 + len(bad)
    good_keys = {k for k, r in all_rows.items() if r["path"] not in bad}

    processor = load_processor(cfg.model)
    merge = processor.video_processor.merge_size ** 2

    prompts, skipped = [], []
    for batch in build_dataset(cfg, rows).iter_batches(batch_size=4, batch_format="numpy"):
        p, s = prompts_from_batch(batch)
        prompts += p
        skipped += s

    # Nothing lost, nothing duplicated.
    assert len(prompts) + len(skipped) == len(all_rows)
    assert sorted([p.key for p in prompts] + [s["key"] for s in skipped]) == sorted(all_rows)
    assert {p.key for p in prompts} == good_keys

    # Every bad row is listed by path with a readable reason.
    assert {s["path"] for s in skipped} == set(bad)
    for s in skipped:
        row = all_rows[s["key"]]
        assert s["path"] == row["path"]
        reason = s["reason"]
        assert isinstance(reason, str) and len(reason.strip()) > 5, s
        assert "Traceback" not in reason
    reasons = {bad[s["path"]]: s["reason"] for s in skipped}
    assert "not found" in reasons["missing"]
    assert "empty" in reasons["empty"]
    assert "cannot decode" in reasons["truncated"]
    assert "cannot decode" in reasons["text"]

    # Every good row is a complete prompt.
    for p in prompts:
        row = all_rows[p.key]
        assert (p.id, p.path, p.label, p.category) == (row["id"], row["path"], row["label"], row["category"])
        assert p.is_video == (row["media"] == "video")
        pad = processor.video_token_id if p.is_video else processor.image_token_id
        other = processor.image_token_id if p.is_video else processor.video_token_id
        n_pad = int((p.input_ids == pad).sum())
        assert n_pad > 0 and not (p.input_ids == other).any()
        assert p.pixel_values.ndim == 2 and p.pixel_values.shape[0] > 0
        assert np.isfinite(p.pixel_values).all()
        assert p.grid_thw.shape == (3,)
        assert p.pixel_values.shape[0] == int(np.prod(p.grid_thw))
        assert n_pad == int(np.prod(p.grid_thw)) // merge
        if p.is_video:
            # 8 frames, temporal patch 2 -> 4 temporal patches; 8 frames at 8 fps over 4 of them.
            assert p.grid_thw[0] == cfg.data.num_frames // processor.video_processor.temporal_patch_size
            assert p.second_per_grid_t == pytest.approx(2 * (row["num_frames"] / row["fps"]) / cfg.data.num_frames)
        else:
            assert p.grid_thw[0] == 1
        # The pixel budget holds per frame.
        patch = processor.video_processor.patch_size
        assert p.grid_thw[1] * p.grid_thw[2] * patch * patch <= cfg.data.max_pixels
    assert any(p.is_video for p in prompts) and any(not p.is_video for p in prompts)
