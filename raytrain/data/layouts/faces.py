"""Face-manipulation datasets, each in its own published shape: FaceForensics++, Celeb-DF v2, DFDC, FakeAVCeleb."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from raytrain.data.layouts.scan import SPLIT_NAMES, LayoutScan
from raytrain.data.manifest import LABELS

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
    scan = LayoutScan(root, source)
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
    scan = LayoutScan(root, source)
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
    scan = LayoutScan(root, source)
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
    scan = LayoutScan(root, source)
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
