"""Generate the synthetic deepfake dataset and its manifest.

    python -m jobs.make_synthetic --out DIR [--layout genbuster|dfr5] [--num-train N] [--num-test N]
        [--seed S] [--size PX] [--frames N] [--force]

Writes ``DIR/<split>/<real|fake>/<category>/*`` (videos and images) or, with ``--layout dfr5``, the
DF-R5-shaped images ``DIR/<domain>/<split>/<real|fake>/*.png`` with DX-LLaVA's LLaVA JSON lists
(explanations ending in ``### Answer:``), and ``DIR/manifest.parquet``.
Idempotent: an existing manifest is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from raytrain.data.ingest import Source, ingest, scan_sources
from raytrain.data.manifest import write_manifest
from raytrain.data.synthetic import make_synthetic_dataset, make_synthetic_dfr5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.make_synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="dataset folder")
    parser.add_argument("--layout", choices=["genbuster", "dfr5"], default="genbuster",
                        help="genbuster: videos and images by category; dfr5: DX-LLaVA's images and LLaVA JSON lists")
    parser.add_argument("--num-train", type=int, default=None, help="train items, even (default 320; dfr5: 96)")
    parser.add_argument("--num-test", type=int, default=None, help="test items, even (default 96; dfr5: 48)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=56, help="frame side in pixels, even (default 56)")
    parser.add_argument("--frames", type=int, default=8, help="frames per video (default 8)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a manifest exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    manifest_path = args.out / "manifest.parquet"
    if manifest_path.exists() and not args.force:
        print(f"{manifest_path} exists; nothing to do (pass --force to regenerate)")
        return 0
    dfr5 = args.layout == "dfr5"
    num_train = args.num_train if args.num_train is not None else (96 if dfr5 else 320)
    num_test = args.num_test if args.num_test is not None else (48 if dfr5 else 96)
    start = time.perf_counter()
    with tqdm(total=num_train + num_test, desc="generating", unit="item") as bar:
        try:
            if dfr5:
                make_synthetic_dfr5(args.out, num_train=num_train, num_test=num_test, seed=args.seed, size=args.size,
                                    overwrite=args.force, progress=bar.update)
            else:
                make_synthetic_dataset(
                    args.out, num_train=num_train, num_test=num_test, seed=args.seed,
                    size=args.size, num_frames=args.frames, overwrite=args.force, progress=bar.update)
        except FileExistsError as exc:
            bar.close()
            print(f"error: {exc} (pass --force to replace them)", file=sys.stderr)
            return 2
        except ValueError as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            return 2
    ingested = ingest(scan_sources([Source(args.out, "llava" if dfr5 else "genbuster", "synthetic")]))
    table = ingested.table
    write_manifest(table, manifest_path)
    print(f"wrote {manifest_path}: {table.num_rows} rows in {time.perf_counter() - start:.1f} s")
    counts = Counter(zip(*(table.column(c).to_pylist() for c in ("split", "label", "category"))))
    for (split, label, category), n in sorted(counts.items()):
        print(f"  {split:<6} {label:<5} {category:<14} {n}")
    for rej in ingested.rejects:
        print(f"  rejected {rej['path']}: {rej['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
