"""Dataset folders -> manifest rows and rejects (SPEC section 8): the one ingest every caller shares.

`scan_sources` lists each folder's files through its layout (`raytrain.data.layouts`);
`ingest` groups them by source clip, inspects every file (`manifest.inspect_entry`),
drops exact duplicates, assigns leak-free splits and, where asked, training weights.
`jobs.prepare_data`, `jobs.evaluate --folder` (`raytrain.eval.inference.folder_rows`),
`jobs.make_synthetic` and the tests all go through it, so a file is judged the same way
everywhere. The two steps are separate so that a caller can report the scan (and stop on
bad input) before the costly inspection. Only `Inspection.RAY` uses Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import Enum
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from raytrain.data.layouts import detect_layout, scan_source
from raytrain.data.manifest import inspect_entry, rows_to_table
from raytrain.data.splits import assign_groups, assign_splits, balance_weights, drop_duplicates, stable_sample

Progress = Callable[[int], None]
# `inspect_entry`'s answer for one file: (row, None), or (None, reject) when it cannot be used.
Inspected = tuple[dict | None, dict | None]


@dataclass(frozen=True)
class Source:
    """A dataset folder to ingest: its layout is detected and its name derived from it when not given."""

    root: Path
    layout: str | None = None
    name: str | None = None


@dataclass
class Scanned:
    """What the layouts found: the sources (layouts and names resolved), their entries, and the
    files they rejected already (no label, unsupported type, listed but missing)."""

    sources: list[Source]
    entries: list[dict]
    rejects: list[dict]


@dataclass
class Ingested:
    """The manifest rows, every reject sorted by path (from the scan, inspection and duplicates), and
    the entries whose file failed inspection, each with the reject's ``reason``."""

    rows: list[dict]
    rejects: list[dict]
    unreadable: list[dict]

    @property
    def table(self) -> pa.Table:
        return rows_to_table(self.rows)


class Inspection(Enum):
    """Where `ingest` inspects the files."""

    SERIAL = "serial"  # hash and probe each file in this process: small datasets, tests
    HASH_ONLY = "hash-only"  # hash in threads (hashlib releases the GIL), decode nothing: no Ray to start
    RAY = "ray"  # hash and probe in parallel Ray Data tasks; the caller has initialised Ray


def scan_sources(sources: Sequence[Source], *, max_files: int | None = None, seed: int = 0,
                 on_source: Callable[[Source, list[dict], list[dict]], None] | None = None,
                 allow_outside_root: bool = False) -> Scanned:
    """Scan each source in order with its layout.

    A source without a name takes its layout's, or ``<layout>-<folder>`` when an earlier source has that
    name. ``max_files`` keeps a seeded, stable pick of each source's entries (`stable_sample`).
    ``on_source(source, entries, rejects)`` hears of each source as soon as it is scanned. A file outside
    its source's folder is rejected unless ``allow_outside_root`` (`raytrain.data.layouts.scan_source`).
    """
    resolved, entries, rejects = [], [], []
    for source in sources:
        layout = source.layout or detect_layout(source.root)
        taken = {s.name for s in resolved}
        name = source.name or (layout if layout not in taken else f"{layout}-{Path(source.root).resolve().name}")
        found, bad = scan_source(source.root, layout, name, allow_outside_root=allow_outside_root)
        if max_files is not None:
            found = stable_sample(found, max_files, seed=seed)
        source = replace(source, layout=layout, name=name)
        if on_source is not None:
            on_source(source, found, bad)
        resolved.append(source)
        entries += found
        rejects += bad
    return Scanned(resolved, entries, rejects)


def ingest(scanned: Scanned, *, inspection: Inspection = Inspection.SERIAL, workers: int = 1,
           progress: Progress | None = None, seed: int = 0, split: str | None = None, deduplicate: bool = True,
           mix: dict[str, float] | None = None) -> Ingested:
    """Group, inspect, drop duplicates, split and weight what `scan_sources` found.

    ``workers`` threads or Ray Data tasks inspect in parallel; ``progress(n)`` is called as ``n`` more
    files are inspected. Rows are ordered by source (as given), then path, so the first copy of a
    duplicate kept is the same on every run. ``split`` puts every row in that split (an evaluation
    folder) instead of assigning leak-free splits by source clip with ``seed``; ``deduplicate=False``
    keeps copies of the same content (each is its own test item). ``mix`` (source -> share; empty: every
    source weighs 1) sets training weights for real/fake balance (`balance_weights`); None sets none.
    """
    entries = assign_groups(scanned.entries)
    rows, unreadable, rejects = [], [], list(scanned.rejects)
    for entry, (row, reject) in zip(entries, _inspect(entries, inspection, workers, progress or (lambda n: None))):
        if row is not None:
            rows.append(row)
        else:
            unreadable.append({**entry, "reason": reject["reason"]})
            rejects.append(reject)
    order = {source.name: i for i, source in enumerate(scanned.sources)}
    rows.sort(key=lambda r: (order[r["source"]], r["path"]))
    if deduplicate:
        rows, duplicates = drop_duplicates(rows)
        rejects += duplicates
    rows = assign_splits(rows, seed=seed) if split is None else [{**r, "split": split} for r in rows]
    if mix is not None:
        rows = balance_weights(rows, mix)
    return Ingested(rows, sorted(rejects, key=lambda r: r["path"]), unreadable)


def _inspect(entries: list[dict], inspection: Inspection, workers: int, progress: Progress) -> list[Inspected]:
    """`inspect_entry` of every entry, in the entries' order."""
    if inspection is Inspection.RAY:
        return _inspect_in_ray_tasks(entries, workers, progress)
    if inspection is Inspection.HASH_ONLY:
        with ThreadPoolExecutor(workers) as pool:
            return _counted(pool.map(partial(inspect_entry, probe_media=False), entries), progress)
    return _counted(map(inspect_entry, entries), progress)


def _counted(results, progress: Progress) -> list[Inspected]:
    out = []
    for result in results:
        out.append(result)
        progress(1)
    return out


def _inspect_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    results = [json.dumps(inspect_entry(json.loads(text))) for text in batch["entry"]]
    return {"index": batch["index"], "result": np.asarray(results, dtype=object)}


def _inspect_in_ray_tasks(entries: list[dict], workers: int, progress: Progress) -> list[Inspected]:
    """Entries travel as JSON (their optional keys mix None and values, which Arrow would refuse to
    infer), with their index to put the results back in order."""
    import ray

    if not entries:
        return []
    # Small blocks keep every task busy to the end; a few hundred keep the scheduler cheap.
    per_block = max(1, min(32, len(entries) // (4 * workers) or 1))
    items = [{"index": i, "entry": json.dumps(e)} for i, e in enumerate(entries)]
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_block)).map_batches(
        _inspect_batch, batch_size=per_block, concurrency=workers, num_cpus=1)
    results: list[Inspected] = [None] * len(entries)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for index, text in zip(batch["index"], batch["result"]):
            results[int(index)] = tuple(json.loads(text))
        progress(len(batch["result"]))
    return results
