"""The media manifest (SPEC section 8): one Parquet row per media file.

This module defines the schema, reads and writes manifests, and scans the
GenBuster layout ``ROOT/[split/]{real,fake}/[subcategory/]*``. Files that
cannot be probed are never put in a manifest; scanners return them as
rejects with a human-readable reason instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raytrain.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaError, probe

MANIFEST_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("media", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("fps", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("watermark", pa.bool_()),
    pa.field("content_hash", pa.string(), nullable=False),
])
LABELS = ("real", "fake")


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


def _missing_columns(table: pa.Table) -> list[str]:
    return [name for name in MANIFEST_SCHEMA.names if name not in table.column_names]


def write_manifest(table: pa.Table, path: Path) -> None:
    """Write a manifest as Parquet, refusing a table that lacks manifest columns."""
    missing = _missing_columns(table)
    if missing:
        raise ValueError(f"cannot write manifest {path}: missing column(s) {', '.join(missing)}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))


def read_manifest(path: Path) -> pa.Table:
    """Read a manifest, checking that every required column is present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    table = pq.read_table(str(path))
    missing = _missing_columns(table)
    if missing:
        raise ValueError(f"manifest {path} is missing required column(s): {', '.join(missing)}")
    return table


def _label_dirs(root: Path) -> list[tuple[str, Path]]:
    """(split, label folder) pairs; a root holding real/fake directly is all train."""
    direct = [root / lb for lb in LABELS if (root / lb).is_dir()]
    if direct:
        return [("train", d) for d in direct]
    return [(split.name.lower(), split / lb)
            for split in sorted(p for p in root.iterdir() if p.is_dir())
            for lb in LABELS if (split / lb).is_dir()]


def _watermarks(root: Path) -> dict[str, bool]:
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        return {}
    flags = {}
    with open(meta) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{meta}:{lineno}: invalid JSON ({exc.msg})") from exc
            if "path" in rec and rec.get("watermark") is not None:
                flags[Path(rec["path"]).as_posix()] = bool(rec["watermark"])
    return flags


def scan_genbuster(root: Path, source: str = "genbuster") -> tuple[pa.Table, list[dict]]:
    """Scan ``ROOT/[split/]{real,fake}/[subcategory/]*`` into a manifest table.

    Without split folders everything is ``train``. Real items get category
    ``real``; fakes get their normalised subcategory folder name, or
    ``unknown`` when they sit directly under ``fake/``. Watermark flags come
    from ``ROOT/metadata.jsonl`` when present. Returns the table and the
    rejects, ``[{"path", "reason"}]``, of files that could not be probed.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    label_dirs = _label_dirs(root)
    if not label_dirs:
        raise ValueError(f"{root} has no real/ or fake/ folders (expected ROOT/[split/]{{real,fake}}/...)")
    watermarks = _watermarks(root)
    rows, rejects = [], []
    for split, label_dir in label_dirs:
        for file in sorted(label_dir.rglob("*")):
            kind = media_kind(file)
            rel = file.relative_to(root).as_posix()
            if kind is None or not file.is_file() or any(p.startswith(".") for p in rel.split("/")):
                continue
            try:
                info = probe(str(file), kind)
            except MediaError as exc:
                rejects.append({"path": str(file), "reason": exc.reason})
                continue
            parts = file.relative_to(label_dir).parts
            if label_dir.name == "real":
                category = "real"
            else:
                category = normalise_category(parts[0]) if len(parts) > 1 else "unknown"
            rows.append({
                "id": stable_id(source, rel),
                "path": str(file),
                "media": kind,
                "label": label_dir.name,
                "source": source,
                "category": category,
                "split": split,
                "domain": "",
                "fps": info["fps"],
                "num_frames": info["num_frames"],
                "width": info["width"],
                "height": info["height"],
                "watermark": watermarks.get(rel),
                "content_hash": content_hash(file),
            })
    return rows_to_table(rows), sorted(rejects, key=lambda r: r["path"])
