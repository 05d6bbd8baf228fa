"""What every layout shares: the entries and rejects of one source, and paths that can always be stored."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from raytrain.data.manifest import media_kind, stable_id
from raytrain.data.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

SPLIT_NAMES = ("train", "val", "test")
_SUPPORTED = ", ".join(sorted(VIDEO_EXTENSIONS | IMAGE_EXTENSIONS))


class LayoutScan:
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
        # A listed file outside the root (`../x`, an absolute path) keeps its path relative to the root;
        # `raytrain.data.layouts.scan_source` rejects it unless outside files are allowed.
        rel = Path(os.path.relpath(file, self.root)).as_posix()
        self.entries.append({
            "id": stable_id(self.source, rel), "path": str(file), "rel": rel, "media": media, "label": label,
            "source": self.source, "category": category if label == "fake" else "real", "domain": domain,
            "clips": [f"{self.source}:{c}" for c in clips], "official_split": official_split, **extra,
        })

    def result(self) -> tuple[list[dict], list[dict]]:
        return self.entries, sorted(self.rejects, key=lambda r: r["path"])


def outside_root(root: Path, path: Path | str) -> str | None:
    """Why `path` (a layout's entry, after symlinks) lies outside the dataset folder `root`, or None when it is inside."""
    path = Path(path)
    real, real_root = path.resolve(), root.resolve()
    if real.is_relative_to(real_root):
        return None
    if Path(os.path.normpath(path)).is_relative_to(root):
        return f"a symbolic link to {display_path(real)}, outside the dataset folder {root} (--allow-outside-root takes it)"
    return f"outside the dataset folder {root} (--allow-outside-root takes it)"


def display_path(path: Path | str) -> str:
    """The path as text that can always be stored: undecodable bytes become ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
        return False
    return True
