"""Dataset layouts of SPEC section 8: recognise a folder's layout and list its media.

Each layout has ``detect(root) -> bool`` and ``scan(root, source) -> (entries,
rejects)``. An entry is a manifest row without the file's metadata:
``path, rel, media, label, source, category, domain, clips, official_split``
(plus ``watermark`` where known). ``clips`` names the source clip(s) the file
derives from (FF++ ``000_003.mp4`` derives from originals 000 and 003);
`raytrain.data.splits.assign_groups` turns them into one ``group`` per connected
set so that splits never separate them. ``official_split`` is the dataset's
own split, or None where it has none. Rejects are ``{"path", "source",
"reason"}`` for files the layout can already tell are unusable (unsupported
type, no label, listed but missing); decoding problems are found later by
`raytrain.data.manifest.inspect_entry`.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from raytrain.data.manifest import CATEGORIES, LABELS, inspect_entry, media_kind, normalise_category, rows_to_table, stable_id
from raytrain.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

SPLIT_NAMES = ("train", "val", "test")
FFPP_CATEGORIES = {
    "Deepfakes": "face-swap", "FaceSwap": "face-swap", "FaceShifter": "face-swap", "DeepFakeDetection": "face-swap",
    "Face2Face": "face-reenactment", "NeuralTextures": "face-reenactment",
}
CELEBDF_FOLDERS = {"Celeb-real": "real", "YouTube-real": "real", "Celeb-synthesis": "fake"}
CELEBDF_TEST_LIST = "List_of_testing_videos.txt"
FAKEAVCELEB_FOLDERS = ("RealVideo-RealAudio", "RealVideo-FakeAudio", "FakeVideo-RealAudio", "FakeVideo-FakeAudio")
# FakeAVCeleb names the method in its file names and meta_data.csv: face-swap methods vs Wav2Lip.
_FACE_SWAP_METHODS = ("faceswap", "fsgan")
_LIP_SYNC_METHODS = ("wav2lip", "wavtolip")
_SUPPORTED = ", ".join(sorted(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS))


class _Scan:
    """Entries and rejects of one source, with the helpers every layout shares."""

    def __init__(self, root: Path, source: str):
        self.root, self.source = root, source
        self.entries: list[dict] = []
        self.rejects: list[dict] = []

    def reject(self, path: Path | str, reason: str) -> None:
        self.rejects.append({"path": display_path(path), "source": self.source, "reason": reason})

    def files(self, folder: Path, skip: tuple[str, ...] = ()) -> Iterator[tuple[Path, str]]:
        """(file, media kind) under ``folder``, sorted; hidden files and ``skip`` names ignored,
        non-media files and names that cannot be stored as UTF-8 rejected."""
        for file in sorted(folder.rglob("*")):
            rel = file.relative_to(folder)
            if any(part.startswith(".") for part in rel.parts) or file.name in skip or file.is_dir():
                continue
            if not _utf8(file):
                self.reject(file, "file name is not valid UTF-8; rename the file")
                continue
            kind = media_kind(file)
            if kind is None:
                self.reject(file, f"unsupported file type {file.suffix or '(no extension)'!r} (supported: {_SUPPORTED})")
                continue
            yield file, kind

    def add(self, file: Path, media: str, *, label: str, category: str, clips: list[str],
            official_split: str | None = None, domain: str = "", **extra) -> None:
        rel = file.relative_to(self.root).as_posix()
        self.entries.append({
            "id": stable_id(self.source, rel), "path": str(file), "rel": rel, "media": media, "label": label,
            "source": self.source, "category": category if label == "fake" else "real", "domain": domain,
            "clips": [f"{self.source}:{c}" for c in clips], "official_split": official_split, **extra,
        })

    def result(self) -> tuple[list[dict], list[dict]]:
        return self.entries, sorted(self.rejects, key=lambda r: r["path"])


def display_path(path: Path | str) -> str:
    """The path as text that can always be stored: undecodable bytes become ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
        return False
    return True


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


def _scan_label_dirs(scan: _Scan, label_dirs: list[tuple[str | None, Path]]) -> None:
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
    scan = _Scan(root, source)
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
    scan = _Scan(root, source)
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
        if rel not in on_disk:
            if media_kind(Path(rel)) is not None:  # an unsupported one was rejected as such already
                scan.reject(root / rel, f"listed in {table.name} (line {rec['lineno']}) but the file does not exist")
            continue
        file, kind = on_disk[rel]
        if label not in LABELS:
            scan.reject(file, f"{table.name} line {rec['lineno']}: label {rec['label']!r} is not real or fake")
            continue
        category, domain = _fake_category(rec["category"]) if rec.get("category") else ("unknown", "")
        scan.add(file, kind, label=label, category=category, domain=domain, clips=[rel],
                 explanation=rec.get("explanation") or None)
    for rel in sorted(set(on_disk) - set(listed)):
        scan.reject(on_disk[rel][0], f"not listed in {table.name}, so it has no label")
    return scan.result()


# ---------------------------------------------------------------- DF-R5

def _dfr5_domains(root: Path) -> list[Path]:
    return [d for d in sorted(p for p in root.iterdir() if p.is_dir())
            if any((d / s / lb).is_dir() for s in SPLIT_NAMES for lb in LABELS)]


def detect_dfr5(root: Path) -> bool:
    return bool(_dfr5_domains(root))


def scan_dfr5(root: Path, source: str = "dfr5") -> tuple[list[dict], list[dict]]:
    """DF-R5: ``ROOT/<domain>/{train,val,test}/{real,fake}/*`` images; the domain folder is the generator."""
    scan = _Scan(root, source)
    for domain in _dfr5_domains(root):
        for split in SPLIT_NAMES:
            for label in LABELS:
                for file, kind in scan.files(domain / split / label) if (domain / split / label).is_dir() else ():
                    scan.add(file, kind, label=label, category="image-generation", domain=domain.name,
                             clips=[file.relative_to(root).as_posix()], official_split=split)
    return scan.result()


# ---------------------------------------------------------------- FaceForensics++

def detect_ffpp(root: Path) -> bool:
    return (root / "original_sequences").is_dir() or (root / "manipulated_sequences").is_dir()


def _ffpp_official_splits(root: Path) -> dict[str, str]:
    """youtube id -> split from FF++'s ``splits/{train,val,test}.json`` (lists of [target, source] pairs)."""
    out = {}
    for split in SPLIT_NAMES:
        file = root / "splits" / f"{split}.json"
        if file.is_file():
            for pair in json.loads(file.read_text()):
                out.update({str(i): split for i in pair})
    return out


def _ffpp_clips(stem: str, kind: str) -> list[str]:
    """Source clips of an FF++ file: youtube ``000`` / ``000_003``; actors ``01__scene`` / ``01_02__scene__X``."""
    if kind == "actors" or "__" in stem:
        actor, scene = stem.split("__")[0].split("_")[0], stem.split("__")[1] if "__" in stem else ""
        return [f"actors/{actor}__{scene}"]
    return [f"youtube/{i}" for i in stem.split("_")]


def scan_ffpp(root: Path, source: str = "ffpp") -> tuple[list[dict], list[dict]]:
    """FaceForensics++: originals are real; each manipulation method is its own category
    (Deepfakes, FaceSwap, FaceShifter: face-swap; Face2Face, NeuralTextures: face-reenactment).
    A fake ``<target>_<source>`` derives from both originals. Official splits from ``splits/*.json`` when present."""
    scan = _Scan(root, source)
    official = _ffpp_official_splits(root)
    # Only the videos/ folders: masks/ and raw frames are not training media.
    for videos in sorted(root.glob("original_sequences/*/*/videos")):
        kind = videos.parent.parent.name
        for file, media in scan.files(videos):
            scan.add(file, media, label="real", category="real", domain=kind, clips=_ffpp_clips(file.stem, kind),
                     official_split=official.get(file.stem) if kind == "youtube" else None)
    for videos in sorted(root.glob("manipulated_sequences/*/*/videos")):
        method = videos.parent.parent.name
        if videos.parent.name == "masks":  # manipulation masks, not media to classify
            continue
        for file, media in scan.files(videos):
            clips = _ffpp_clips(file.stem, "actors" if method == "DeepFakeDetection" else "youtube")
            split = official.get(file.stem.split("_")[0]) if method != "DeepFakeDetection" else None
            scan.add(file, media, label="fake", category=FFPP_CATEGORIES.get(method, "unknown"), domain=method,
                     clips=clips, official_split=split)
    return scan.result()


# ---------------------------------------------------------------- Celeb-DF v2

def detect_celebdf(root: Path) -> bool:
    return any((root / name).is_dir() for name in CELEBDF_FOLDERS)


def scan_celebdf(root: Path, source: str = "celebdf") -> tuple[list[dict], list[dict]]:
    """Celeb-DF v2: Celeb-real and YouTube-real are real, Celeb-synthesis fake (face-swap).

    ``List_of_testing_videos.txt`` (lines ``<label> <folder>/<file>``) is the
    official test split; everything else is train. A fake
    ``id<A>_id<B>_<clip>`` derives from the real ``id<A>_<clip>`` and shares
    its identity pair with the other clips swapped from B onto A.
    """
    scan = _Scan(root, source)
    test_list = root / CELEBDF_TEST_LIST
    tests = set()
    if test_list.is_file():
        tests = {line.split()[-1] for line in test_list.read_text().splitlines() if line.strip()}
    for folder, label in CELEBDF_FOLDERS.items():
        if not (root / folder).is_dir():
            continue
        for file, media in scan.files(root / folder):
            parts = file.stem.split("_")
            if folder == "YouTube-real":
                clips = [f"youtube/{file.stem}"]
            elif label == "fake" and len(parts) == 3:
                clips = [f"{parts[0]}_{parts[2]}", f"pair/{parts[0]}_{parts[1]}"]
            else:
                clips = [file.stem]
            rel = file.relative_to(root).as_posix()
            scan.add(file, media, label=label, category="face-swap", domain=folder, clips=clips,
                     official_split="test" if rel in tests else "train")
    for rel in sorted(r for r in tests if not (root / r).exists() and not (root / r).is_symlink()):
        scan.reject(root / rel, f"listed in {CELEBDF_TEST_LIST} but the file does not exist")
    return scan.result()


# ---------------------------------------------------------------- DFDC

def _dfdc_metadata(root: Path) -> list[Path]:
    return sorted([*root.glob("metadata.json"), *root.glob("*/metadata.json")])


def detect_dfdc(root: Path) -> bool:
    return bool(_dfdc_metadata(root))


def scan_dfdc(root: Path, source: str = "dfdc") -> tuple[list[dict], list[dict]]:
    """DFDC: each part folder's ``metadata.json`` maps file -> ``{label: REAL|FAKE, original, split}``.

    A fake derives from its ``original``. DFDC marks every file of its training
    parts ``split: train``; only ``val``/``test`` are kept as official splits,
    so a held-out set can still be drawn (by source clip) from training parts.
    """
    scan = _Scan(root, source)
    for meta in _dfdc_metadata(root):
        folder = meta.parent
        try:
            records = json.loads(meta.read_text())
            if not isinstance(records, dict):
                raise ValueError("expected an object mapping file names to labels")
        except (ValueError, UnicodeDecodeError) as exc:
            scan.reject(meta, f"unreadable metadata.json ({exc}); its folder is skipped")
            continue
        on_disk = {file.name: (file, kind) for file, kind in scan.files(folder, skip=("metadata.json",))
                   if file.parent == folder}
        for name, rec in sorted(records.items()):
            rec = rec if isinstance(rec, dict) else {}
            if name not in on_disk:
                scan.reject(folder / name, "listed in metadata.json but the file does not exist")
                continue
            file, kind = on_disk[name]
            label = str(rec.get("label", "")).lower()
            if label not in LABELS:
                scan.reject(file, f"metadata.json gives label {rec.get('label')!r}, not REAL or FAKE")
                continue
            original = rec.get("original") if label == "fake" else None
            split = str(rec.get("split", "")).lower()
            scan.add(file, kind, label=label, category="face-swap", domain=folder.name,
                     clips=[Path(original or name).stem], official_split=split if split in ("val", "test") else None)
        for name in sorted(set(on_disk) - set(records)):
            scan.reject(on_disk[name][0], "not listed in metadata.json, so it has no label")
    return scan.result()


# ---------------------------------------------------------------- FakeAVCeleb

def detect_fakeavceleb(root: Path) -> bool:
    return any((root / name).is_dir() for name in FAKEAVCELEB_FOLDERS)


def _fakeav_methods(root: Path) -> dict[tuple[str, str], str]:
    """(identity folder, file name) -> method from FakeAVCeleb's ``meta_data.csv`` when present."""
    meta = root / "meta_data.csv"
    if not meta.is_file():
        return {}
    out = {}
    with open(meta, newline="", encoding="utf-8", errors="replace") as fh:
        for rec in csv.DictReader(fh):
            rec = {(k or "").strip().lower(): (v or "").strip() for k, v in rec.items()}
            if rec.get("path") and rec.get("method"):
                identity = rec.get("target1") or rec.get("source") or ""
                out[(identity, Path(rec["path"]).name)] = rec["method"].lower()
    return out


def _fakeav_category(folder: str, method: str) -> str:
    if folder == "RealVideo-FakeAudio":
        return "lip-sync"  # cloned voice over the real face: the lips no longer match the speech
    if any(m in method for m in _FACE_SWAP_METHODS):
        return "face-swap"
    if any(m in method for m in _LIP_SYNC_METHODS):
        return "lip-sync"
    return "unknown"


def scan_fakeavceleb(root: Path, source: str = "fakeavceleb") -> tuple[list[dict], list[dict]]:
    """FakeAVCeleb: ``<RealVideo|FakeVideo>-<RealAudio|FakeAudio>/<race>/<gender>/<id>/<clip>...mp4``.

    Only RealVideo-RealAudio is real. Fake video is face-swap (FaceSwap,
    FSGAN) or lip-sync (Wav2Lip) by its method, from the file name or
    ``meta_data.csv``; fake audio alone is lip-sync. A fake ``<clip>_...``
    in identity folder ``<id>`` derives from the real ``<id>/<clip>``.
    """
    scan = _Scan(root, source)
    methods = _fakeav_methods(root)
    for folder in FAKEAVCELEB_FOLDERS:
        if not (root / folder).is_dir():
            continue
        for file, media in scan.files(root / folder):
            identity = file.parent.name
            method = methods.get((identity, file.name), file.stem.lower())
            label = "real" if folder == "RealVideo-RealAudio" else "fake"
            scan.add(file, media, label=label, category=_fakeav_category(folder, method), domain=folder,
                     clips=[f"{identity}/{file.stem.split('_')[0]}"])
    return scan.result()


# ---------------------------------------------------------------- registry

Scanner = Callable[[Path, str], tuple[list[dict], list[dict]]]
# Detection order matters: the specific layouts first, the generic label folders last.
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Scanner]] = {
    "ffpp": (detect_ffpp, scan_ffpp),
    "celebdf": (detect_celebdf, scan_celebdf),
    "dfdc": (detect_dfdc, scan_dfdc),
    "fakeavceleb": (detect_fakeavceleb, scan_fakeavceleb),
    "dfr5": (detect_dfr5, scan_dfr5),
    "genbuster": (detect_genbuster, scan_genbuster),
    "clips": (detect_clips, scan_clips),
}


def detect_layout(root: Path) -> str:
    """The name of the first layout in `LAYOUTS` that recognises ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    for name, (detect, _) in LAYOUTS.items():
        if detect(root):
            return name
    raise ValueError(f"{root}: no known dataset layout (known: {', '.join(LAYOUTS)}; see SPEC section 8)")


def scan_source(root: Path, layout: str | None = None, source: str | None = None) -> tuple[list[dict], list[dict]]:
    """Entries and rejects of one dataset folder, its layout detected unless given."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    return LAYOUTS[layout][1](root, source or layout)


def scan_dataset(root: Path, layout: str | None = None, source: str | None = None, *,
                 seed: int = 0) -> tuple[pa.Table, list[dict]]:
    """One folder straight to a manifest table, in this process (small datasets, tests, `jobs.make_synthetic`).

    Same steps as `jobs.prepare_data` without Ray and without training
    weights: scan, group, inspect each file, drop duplicates, split. Returns
    the table and the rejects.
    """
    from raytrain.data.splits import assign_groups, assign_splits, drop_duplicates

    entries, rejects = scan_source(root, layout, source)
    rows = []
    for entry in assign_groups(entries):
        row, reject = inspect_entry(entry)
        if row is not None:
            rows.append(row)
        else:
            rejects.append(reject)
    rows, duplicates = drop_duplicates(sorted(rows, key=lambda r: r["path"]))
    return rows_to_table(assign_splits(rows, seed=seed)), sorted(rejects + duplicates, key=lambda r: r["path"])
