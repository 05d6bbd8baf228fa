"""The media manifest (SPEC section 8): one Parquet row per media file.

This module defines the schema, reads and writes manifests, and turns a
layout's candidate entry (see `raytrain.data.layouts`) into a manifest row by
hashing and probing the file. Files that cannot be used are never put in a
manifest; they become rejects, ``{"path", "source", "reason"}``, with a
human-readable reason instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raytrain.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaError, check_file, probe

MANIFEST_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("media", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    # The source clip a file derives from (an FF++ original and its manipulations share one):
    # splits never separate a group.
    pa.field("group", pa.string(), nullable=False),
    pa.field("duration", pa.float64()),
    pa.field("fps", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("codec", pa.string()),
    pa.field("watermark", pa.bool_()),
    pa.field("content_hash", pa.string(), nullable=False),
    # Training sampling weight (real/fake balance and source mixing); null means 1.
    pa.field("weight", pa.float64()),
    # Reasoning to teach in SFT (`<think>` text); null: the `sft.think` template.
    pa.field("explanation", pa.string()),
    # `think` / `no_think`: this row's prompt mode flag, over `data.mode` (the fused SFT set of BusterX++ stage 2).
    pa.field("mode", pa.string()),
])
LABELS = ("real", "fake")
# SPEC section 8's fake categories; real files have category "real".
CATEGORIES = ("text-to-video", "image-generation", "face-swap", "face-reenactment", "lip-sync", "unknown")


def stable_id(source: str, rel_path: str) -> str:
    """First 16 hex digits of sha1(``source:rel_path``): stable across machines and mount points."""
    return hashlib.sha1(f"{source}:{rel_path}".encode()).hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha256 of the file bytes, hex; finds the same clip shipped under two names."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalise_category(name: str) -> str:
    """``"Face_Swap"`` / ``"face swap"`` -> ``"face-swap"``."""
    return "-".join(name.strip().lower().replace("_", " ").split())


def media_kind(path: Path) -> str | None:
    """``"video"``, ``"image"`` or None from the file extension."""
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def rows_to_table(rows: list[dict]) -> pa.Table:
    """A manifest table from row dicts (missing nullable fields become null), sorted by path."""
    rows = sorted(rows, key=lambda r: r["path"])
    return pa.Table.from_pylist(
        [{f.name: r.get(f.name) for f in MANIFEST_SCHEMA} for r in rows], schema=MANIFEST_SCHEMA)


def _missing_columns(table: pa.Table, *, required_only: bool = False) -> list[str]:
    return [f.name for f in MANIFEST_SCHEMA
            if f.name not in table.column_names and (f.nullable is False or not required_only)]


def write_manifest(table: pa.Table, path: Path) -> None:
    """Write a manifest as Parquet, refusing a table that lacks manifest columns."""
    missing = _missing_columns(table)
    if missing:
        raise ValueError(f"cannot write manifest {path}: missing column(s) {', '.join(missing)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))


def read_manifest(path: Path) -> pa.Table:
    """Read a manifest, checking that every required column is present.

    Optional (nullable) columns a manifest lacks, e.g. one written before they
    existed or by another tool, are added as nulls.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    table = pq.read_table(str(path))
    missing = _missing_columns(table, required_only=True)
    if missing:
        raise ValueError(f"manifest {path} is missing required column(s): {', '.join(missing)}; "
                         "write it again with `python -m jobs.prepare_data` (or `jobs.make_synthetic`)")
    for name in _missing_columns(table):
        table = table.append_column(MANIFEST_SCHEMA.field(name), pa.nulls(table.num_rows, MANIFEST_SCHEMA.field(name).type))
    return table


JSONL_SOURCE = "jsonl"  # the source of a JSON-lines row that names none


def write_split_jsonl(table: pa.Table, out_dir: Path, splits: tuple[str, ...] = ("train", "val", "test")) -> list[Path]:
    """`out_dir/<split>.jsonl` for each split, one manifest row per line (the seed's train/val/test.jsonl)."""
    written = []
    rows = table.to_pylist()
    for split in splits:
        path = Path(out_dir) / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["split"] == split))
        written.append(path)
    return written


def json_lines(path: Path):
    """(line number, record) for each non-blank line of a JSON-lines file; a line that does not parse
    raises ValueError naming the file and the line."""
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None


def read_jsonl_manifest(path: Path, split: str) -> pa.Table:
    """A manifest table from a JSON-lines file, every row in `split` (the file is the split): rows
    `write_split_jsonl` wrote, or any with at least `path` and `label` (the rest filled in: id from the
    path, media from its extension, source `jsonl`, category `unknown`). Relative paths are relative to
    the file. A bad line raises with the file and line number."""
    path = Path(path)
    rows = []
    for lineno, row in json_lines(path):
        try:
            media_path = Path(row["path"])
            label = str(row["label"]).lower()
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: not a manifest row with path and label ({e})") from None
        if label not in LABELS:
            raise ValueError(f"{path}:{lineno}: label {row['label']!r} is not real or fake")
        media_path = media_path if media_path.is_absolute() else path.parent / media_path
        row_id = row.get("id") or stable_id(row.get("source") or JSONL_SOURCE, media_path.as_posix())
        rows.append({
            **row, "id": row_id, "path": str(media_path), "label": label, "split": split,
            "media": row.get("media") or media_kind(media_path) or "video",
            "source": row.get("source") or JSONL_SOURCE,
            "category": "real" if label == "real" else normalise_category(row.get("category") or "unknown"),
            "domain": row.get("domain") or "", "group": row.get("group") or row_id,
            "content_hash": row.get("content_hash") or "",
        })
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows_to_table(rows)


def inspect_entry(entry: dict, *, probe_media: bool = True) -> tuple[dict | None, dict | None]:
    """A layout entry -> ``(row, None)``, or ``(None, reject)`` when the file cannot be used.

    The row keeps the entry's bookkeeping keys (``rel``, ``clips``,
    ``official_split``); `rows_to_table` keeps only manifest columns.

    Always runs the cheap file checks and hashes the content; ``probe_media``
    also decodes (duration, fps, frames, resolution, codec; see `media.probe`).
    """
    path = entry["path"]
    try:
        check_file(path)
        info = probe(path, entry["media"]) if probe_media else {}
        digest = content_hash(Path(path))
    except MediaError as exc:
        return None, {"path": path, "source": entry["source"], "reason": exc.reason}
    except OSError as exc:  # the file vanished or became unreadable between the check and the hash
        return None, {"path": path, "source": entry["source"], "reason": f"cannot read the file: {exc.strerror}"}
    return {**entry, **info, "content_hash": digest}, None
