"""Layouts that name the label in their folders or a labels file: GenBuster(-like), a folder of clips, DF-R5."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from raytrain.data.layouts.scan import SPLIT_NAMES, LayoutScan, outside_root
from raytrain.data.manifest import CATEGORIES, LABELS, json_lines, media_kind, normalise_category


def _fake_category(folder_name: str) -> tuple[str, str]:
    """(category, domain) of a fake subfolder: a known category, or ``unknown`` with the folder as domain."""
    name = normalise_category(folder_name)
    return (name, "") if name in CATEGORIES else ("unknown", name)


# ---------------------------------------------------------------- GenBuster and a folder of clips

def _label_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """(official split, label folder) pairs; a root holding real/fake directly has no official split."""
    direct = [root / lb for lb in LABELS if (root / lb).is_dir()]
    if direct:
        return [(None, d) for d in direct]
    return [(split.name.lower(), split / lb)
            for split in sorted(p for p in root.iterdir() if p.is_dir())
            for lb in LABELS if (split / lb).is_dir()]


def _watermarks(root: Path) -> dict[str, bool]:
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        return {}
    flags = {}
    for _, rec in json_lines(meta):
        if "path" in rec and rec.get("watermark") is not None:
            flags[Path(rec["path"]).as_posix()] = bool(rec["watermark"])
    return flags


def _scan_label_dirs(scan: LayoutScan, label_dirs: list[tuple[str | None, Path]]) -> None:
    """``[split/]{real,fake}/[subcategory/]*``: each file is its own source clip."""
    watermarks = _watermarks(scan.root)
    for split, label_dir in label_dirs:
        for file, kind in scan.files(label_dir):
            parts = file.relative_to(label_dir).parts
            fake_subfolder = len(parts) > 1 and label_dir.name == "fake"
            category, domain = _fake_category(parts[0]) if fake_subfolder else ("unknown", "")
            rel = file.relative_to(scan.root).as_posix()
            scan.add(file, kind, label=label_dir.name, category=category, domain=domain, clips=[rel],
                     official_split=split, watermark=watermarks.get(rel))


def detect_genbuster(root: Path) -> bool:
    return any(split is not None for split, _ in _label_dirs(root))


def scan_genbuster(root: Path, source: str = "genbuster") -> tuple[list[dict], list[dict]]:
    """GenBuster-200K(-mini) and similar: ``ROOT/[split/]{real,fake}/[subcategory/]*``.

    Fakes take their subfolder as category when it names one of
    `CATEGORIES`, else ``unknown`` with the subfolder as domain. Watermark
    flags come from ``ROOT/metadata.jsonl`` when present.
    """
    label_dirs = _label_dirs(root)
    if not label_dirs:
        raise ValueError(f"{root} has no real/ or fake/ folders (expected ROOT/[split/]{{real,fake}}/...)")
    scan = LayoutScan(root, source)
    _scan_label_dirs(scan, label_dirs)
    return scan.result()


def _labels_csv(root: Path) -> Path | None:
    for file in sorted(root.glob("*.csv")):
        with open(file, newline="", encoding="utf-8", errors="replace") as fh:
            header = [h.strip().lower() for h in next(csv.reader(fh), [])]
        if "path" in header and "label" in header:
            return file
    return None


def detect_clips(root: Path) -> bool:
    return _labels_csv(root) is not None or any((root / lb).is_dir() for lb in LABELS)


def scan_clips(root: Path, source: str = "clips") -> tuple[list[dict], list[dict]]:
    """A folder of collected clips (the seed's TikTok set): labels from a CSV
    ``path,label[,category][,explanation]`` (paths relative to the CSV; an explanation is the
    reasoning SFT teaches for that file) or from ``real/``/``fake/`` subfolders."""
    scan = LayoutScan(root, source)
    table = _labels_csv(root)
    if table is None:
        if not any((root / lb).is_dir() for lb in LABELS):
            raise ValueError(f"{root} has neither a labels CSV (path,label[,category]) nor real/ and fake/ folders")
        _scan_label_dirs(scan, _label_dirs(root))
        return scan.result()
    listed: dict[str, dict] = {}
    with open(table, newline="", encoding="utf-8", errors="replace") as fh:
        for lineno, rec in enumerate(csv.DictReader(fh), 2):
            rec = {(k or "").strip().lower(): (v or "").strip() for k, v in rec.items()}
            listed[Path(rec["path"]).as_posix()] = {**rec, "lineno": lineno}
    on_disk = {file.relative_to(root).as_posix(): (file, kind) for file, kind in scan.files(root, skip=(table.name,))}
    for rel, rec in sorted(listed.items()):
        label = rec["label"].lower()
        file = Path(os.path.normpath(root / rel))  # `../x` and absolute paths: outside the root
        outside = not file.is_relative_to(root)
        if rel not in on_disk and not (outside and file.is_file() and media_kind(file)):
            if outside:  # a listed media file outside is an entry, for `scan_source` to judge
                scan.reject(file, f"listed in {table.name} (line {rec['lineno']}): {outside_root(root, file)}")
            elif media_kind(Path(rel)) is not None:  # an unsupported one was rejected as such already
                scan.reject(root / rel, f"listed in {table.name} (line {rec['lineno']}) but the file does not exist")
            continue
        file, kind = on_disk[rel] if rel in on_disk else (file, media_kind(file))
        if label not in LABELS:
            scan.reject(file, f"{table.name} line {rec['lineno']}: label {rec['label']!r} is not real or fake")
            continue
        category, domain = _fake_category(rec["category"]) if rec.get("category") else ("unknown", "")
        scan.add(file, kind, label=label, category=category, domain=domain, clips=[rel],
                 explanation=rec.get("explanation") or None)
    for rel in sorted(set(on_disk) - set(listed)):
        scan.reject(on_disk[rel][0], f"not listed in {table.name}, so it has no label")
    return scan.result()


def _scan_one_label(root: Path, source: str, label: str) -> tuple[list[dict], list[dict]]:
    """Every media file under ``root`` (any depth) with ``label``; fakes of unknown category."""
    scan = LayoutScan(root, source)
    for file, kind in scan.files(root):
        scan.add(file, kind, label=label, category="unknown", clips=[file.relative_to(root).as_posix()])
    return scan.result()


def scan_fake_clips(root: Path, source: str = "clips-fake") -> tuple[list[dict], list[dict]]:
    """A folder of clips that are all fake (layout ``clips-fake``: ``jobs.evaluate --label fake``)."""
    return _scan_one_label(root, source, "fake")


def scan_real_clips(root: Path, source: str = "clips-real") -> tuple[list[dict], list[dict]]:
    """A folder of clips that are all real (layout ``clips-real``: ``jobs.evaluate --label real``)."""
    return _scan_one_label(root, source, "real")


# ---------------------------------------------------------------- DF-R5

def _dfr5_domains(root: Path) -> list[Path]:
    return [d for d in sorted(p for p in root.iterdir() if p.is_dir())
            if any((d / s / lb).is_dir() for s in SPLIT_NAMES for lb in LABELS)]


def detect_dfr5(root: Path) -> bool:
    return bool(_dfr5_domains(root))


def scan_dfr5(root: Path, source: str = "dfr5") -> tuple[list[dict], list[dict]]:
    """DF-R5: ``ROOT/<domain>/{train,val,test}/{real,fake}/*`` images; the domain folder is the generator."""
    scan = LayoutScan(root, source)
    for domain in _dfr5_domains(root):
        for split in SPLIT_NAMES:
            for label in LABELS:
                for file, kind in scan.files(domain / split / label) if (domain / split / label).is_dir() else ():
                    scan.add(file, kind, label=label, category="image-generation", domain=domain.name,
                             clips=[file.relative_to(root).as_posix()], official_split=split)
    return scan.result()
