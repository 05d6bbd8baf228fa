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
`raytrain.data.manifest.inspect_entry`. `raytrain.data.ingest` turns a scan
into manifest rows.

The layouts live in `labelled` (label folders or a labels file), `faces`
(the face-manipulation datasets) and `llava` (DX-LLaVA's JSON conversation lists),
on the helpers of `scan`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from raytrain.data.layouts.faces import (
    detect_celebdf,
    detect_dfdc,
    detect_fakeavceleb,
    detect_ffpp,
    scan_celebdf,
    scan_dfdc,
    scan_fakeavceleb,
    scan_ffpp,
)
from raytrain.data.layouts.labelled import (
    detect_clips,
    detect_dfr5,
    detect_genbuster,
    scan_clips,
    scan_dfr5,
    scan_fake_clips,
    scan_genbuster,
    scan_real_clips,
)
from raytrain.data.layouts.llava import detect_llava, scan_llava
from raytrain.data.layouts.scan import display_path, outside_root

Scanner = Callable[[Path, str], tuple[list[dict], list[dict]]]
# Detection order matters: the specific layouts first, the generic label folders last.
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Scanner]] = {
    "ffpp": (detect_ffpp, scan_ffpp),
    "celebdf": (detect_celebdf, scan_celebdf),
    "dfdc": (detect_dfdc, scan_dfdc),
    "fakeavceleb": (detect_fakeavceleb, scan_fakeavceleb),
    # A DF-R5 tree with LLaVA JSON lists beside its domains is read through the lists (they carry explanations).
    "llava": (detect_llava, scan_llava),
    "dfr5": (detect_dfr5, scan_dfr5),
    "genbuster": (detect_genbuster, scan_genbuster),
    "clips": (detect_clips, scan_clips),
    # A flat folder of clips of one label (the seed's TikTok folder); named, never detected.
    "clips-fake": (lambda root: False, scan_fake_clips),
    "clips-real": (lambda root: False, scan_real_clips),
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


def scan_source(root: Path, layout: str | None = None, source: str | None = None, *,
                allow_outside_root: bool = False) -> tuple[list[dict], list[dict]]:
    """Entries and rejects of one dataset folder, its layout detected unless given.

    An entry whose file lies outside ``root`` (a listed ``../../etc/passwd`` or absolute path, a symbolic
    link leaving the folder) is rejected with the reason unless ``allow_outside_root``: a labels file
    must not make the trainer read files its author did not ship."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found: {root}")
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    source = source or layout
    entries, rejects = LAYOUTS[layout][1](root, source)
    if allow_outside_root:
        return entries, rejects
    kept = []
    for entry in entries:
        reason = outside_root(root, entry["path"])
        if reason is None:
            kept.append(entry)
        else:
            rejects.append({"path": display_path(entry["path"]), "source": source, "reason": reason})
    return kept, sorted(rejects, key=lambda r: r["path"])
