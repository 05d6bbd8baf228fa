"""Ingest deepfake datasets into one leak-free manifest (SPEC section 8).

    python -m jobs.prepare_data --source DIR [--source DIR ...] --output OUT
        [--layout NAME ...] [--workers N] [--max-videos N] [--skip-processing]
        [--mix NAME=WEIGHT ...] [--seed S] [--allow-outside-root]

Recognises each source's layout (GenBuster, DF-R5, FaceForensics++, Celeb-DF,
DFDC, FakeAVCeleb, a folder of clips, DX-LLaVA's LLaVA JSON lists beside their
images, with the reasoning kept as each row's explanation) or takes it from --layout, probes every
file in parallel Ray Data tasks (duration, fps, frames, resolution, codec;
--skip-processing only hashes), drops exact duplicates, assigns splits by
source clip and weights training draws for real/fake balance and the --mix.
Writes OUT/manifest.parquet, OUT/train.jsonl, val.jsonl and test.jsonl (the same rows
by split, one JSON object a line, as the seed's pipeline wrote), OUT/rejects.parquet
(path, source, reason) and OUT/summary.json, and prints counts per source x category x
split x label. A file outside its --source folder (named by a labels file, or a symbolic
link leaving it) is a reject unless --allow-outside-root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from raytrain.data.ingest import Inspection, Source, ingest, scan_sources
from raytrain.data.layouts import LAYOUTS
from raytrain.data.manifest import write_manifest, write_split_jsonl
from raytrain.data.splits import format_table, summarise

_SHOW_REJECTS = 50
REJECTS_SCHEMA = pa.schema([("path", pa.string()), ("source", pa.string()), ("reason", pa.string())])


def _mix(text: str) -> tuple[str, float]:
    name, sep, weight = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, e.g. ffpp=2, got {text!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.prepare_data", description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, action="append", required=True, metavar="DIR",
                   help="dataset folder (repeatable); the source is named after its layout")
    p.add_argument("--output", type=Path, required=True, metavar="OUT", help="folder for manifest, rejects, summary")
    p.add_argument("--layout", action="append", choices=sorted(LAYOUTS), default=[],
                   help="layout of the sources: once for all, or once per --source in order (default: detected)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel probing tasks (default: CPU count)")
    p.add_argument("--max-videos", type=int, metavar="N", help="at most N files per source (a seeded, stable pick)")
    p.add_argument("--skip-processing", action="store_true", help="do not decode: no duration/fps/frames/resolution/codec")
    p.add_argument("--mix", type=_mix, action="append", default=[], metavar="NAME=WEIGHT",
                   help="relative share of a source in training draws (repeatable; unnamed sources weigh 1)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="keep files a labels file or symbolic link places outside their --source folder (rejected by default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split assignment and --max-videos pick (default 0)")
    args = p.parse_args(argv)
    if args.layout and len(args.layout) not in (1, len(args.source)):
        p.error(f"give --layout once, or once per --source ({len(args.source)}), not {len(args.layout)} times")
    if args.workers < 1 or (args.max_videos is not None and args.max_videos < 1):
        p.error("--workers and --max-videos must be positive")
    return args


def _print_source(source: Source, entries: list[dict], rejects: list[dict]) -> None:
    print(f"{source.root}: layout {source.layout}, source {source.name!r}: {len(entries)} files, "
          f"{len(rejects)} rejected while scanning")


def _inspection(args: argparse.Namespace) -> Inspection:
    """Hashing alone needs no Ray; probing runs in Ray Data tasks, on a Ray of --workers CPUs unless one is running."""
    if args.skip_processing:
        return Inspection.HASH_ONLY
    import ray

    from raytrain.cluster import init_ray

    init_ray(num_cpus=args.workers)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts files
    return Inspection.RAY


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layouts = args.layout * len(args.source) if len(args.layout) == 1 else args.layout or [None] * len(args.source)
    try:
        scanned = scan_sources([Source(root, layout) for root, layout in zip(args.source, layouts)],
                               max_files=args.max_videos, seed=args.seed, on_source=_print_source,
                               allow_outside_root=args.allow_outside_root)
        names = [source.name for source in scanned.sources]
        mix = dict(args.mix)
        unknown = sorted(set(mix) - set(names))
        if unknown:
            raise ValueError(f"--mix names unknown source(s) {unknown}; the sources are {names}")
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tqdm(total=len(scanned.entries), desc="hashing" if args.skip_processing else "probing", unit="file") as bar:
        inspection = _inspection(args)
        ingested = ingest(scanned, inspection=inspection, workers=args.workers, progress=bar.update, seed=args.seed,
                          mix=mix)
    rows, rejects = ingested.rows, ingested.rejects

    args.output.mkdir(parents=True, exist_ok=True)
    write_manifest(ingested.table, args.output / "manifest.parquet")
    write_split_jsonl(ingested.table, args.output)
    pq.write_table(pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA), args.output / "rejects.parquet")
    summary = summarise(rows, rejects, mix=mix, seed=args.seed)
    summary["sources"] = {source.name: str(source.root.resolve()) for source in scanned.sources}
    summary["skip_processing"] = args.skip_processing
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(summary))
    for rej in rejects[:_SHOW_REJECTS]:
        print(f"  rejected {rej['path']}: {rej['reason']}")
    if len(rejects) > _SHOW_REJECTS:
        print(f"  ... and {len(rejects) - _SHOW_REJECTS} more in rejects.parquet")
    print(f"wrote {args.output / 'manifest.parquet'}, train/val/test.jsonl, rejects.parquet, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
