"""Decode throughput: the project's Ray Data decode path vs a plain single-process decord loop.

    python bench/data_pipeline.py [--videos 32] [--size 256] [--seconds 4] [--fps 25]
        [--frames 16] [--workers 2] [--rounds 2] [--data DIR]

Both sides decode the same videos the same way (`raytrain.data.decode_row`:
decord, one decode thread, uniform frames, per-frame pixel budget): the loop
calls it row after row in this process; the pipeline runs it in parallel Ray
Data tasks over the same blocks and concurrency as training
(`raytrain.data.build_frame_dataset`). Prints frames per second of each and
their ratio per round, after one warm-up pass that starts the Ray workers;
rounds alternate which side goes first. Ray runs its workers at nice 15, so
this process drops to the same niceness: on a machine shared with other jobs
both sides then get the same share of the CPUs. Clips come from
`raytrain.data.synthetic` (cached in --data when given).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402

from raytrain.config.sections import DataConfig  # noqa: E402
from raytrain.data.ingest import Source, ingest, scan_sources  # noqa: E402
from raytrain.data.manifest import write_manifest  # noqa: E402
from raytrain.data.pipeline import build_frame_dataset, decode_row, split_rows  # noqa: E402
from raytrain.data.synthetic import make_synthetic_dataset  # noqa: E402

_RAY_WORKER_NICENESS = 15  # what ray::IDLE / ray::MapWorker processes run at (`ps -o ni`)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=32, help="clips to decode (even, default 32)")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    p.add_argument("--seconds", type=float, default=4.0, help="clip length (default 4 s)")
    p.add_argument("--fps", type=int, default=25, help="clip frame rate (default 25)")
    p.add_argument("--frames", type=int, default=16, help="frames sampled per clip (default 16)")
    p.add_argument("--workers", type=int, default=2, help="decode concurrency of the pipeline (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--data", type=Path, help="keep the generated clips here and reuse them")
    return p.parse_args(argv)


def _manifest(folder: Path, args: argparse.Namespace) -> Path:
    manifest = folder / "manifest.parquet"
    if not manifest.exists():
        start = time.perf_counter()
        make_synthetic_dataset(folder, num_train=args.videos, num_test=0, size=args.size,
                               num_frames=round(args.seconds * args.fps), fps=args.fps, image_share=0.0)
        ingested = ingest(scan_sources([Source(folder, "genbuster", "bench")]))
        assert not ingested.rejects, ingested.rejects
        table = ingested.table
        write_manifest(table, manifest)
        print(f"generated {table.num_rows} clips of {args.size}x{args.size}, {args.seconds:g} s at {args.fps} fps "
              f"in {time.perf_counter() - start:.0f} s")
    return manifest


def plain_loop(rows: list[dict], data: DataConfig) -> tuple[int, float, float]:
    """(frames, wall seconds, CPU seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    frames = sum(decode_row(row, data).shape[0] for row in rows)
    return frames, time.perf_counter() - start, time.process_time() - cpu


def _task_seconds(ds) -> tuple[float, float]:
    """(wall, CPU) seconds summed over the decode tasks, from Ray Data's stats of the last execution."""
    stats = ds.stats()
    decode = stats[stats.index("MapBatches(decode_frames)"):]
    return tuple(_seconds(re.search(rf"Remote {kind} time: .*?([\d.]+)(us|ms|s) total", decode).groups())
                 for kind in ("wall", "cpu"))


def _seconds(value_unit: tuple[str, str]) -> float:
    value, unit = value_unit
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def pipeline(rows, data: DataConfig) -> tuple[int, float, object]:
    start = time.perf_counter()
    ds = build_frame_dataset(data, rows)
    frames = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        assert not any(batch["error"]), batch["error"]
        frames += sum(f.shape[0] for f in batch["frames"])
    return frames, time.perf_counter() - start, ds


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp)
        data = DataConfig(manifest=_manifest(folder, args), num_frames=args.frames, decode_concurrency=args.workers)
        rows = split_rows(data, "train")
        row_dicts = rows.to_pylist()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        print(f"{len(row_dicts)} clips, {args.frames} frames each, budget {data.max_pixels} px/frame, "
              f"{os.cpu_count()} CPUs, pipeline decode concurrency {args.workers}")
        pipeline(rows, data)  # warm-up: every decode worker starts and imports once, as in a long training run
        os.nice(max(0, _RAY_WORKER_NICENESS - os.nice(0)))
        ratios, cpu_ratios = [], []
        for r in range(1, args.rounds + 1):
            if r % 2:
                n_loop, t_loop, c_loop = plain_loop(row_dicts, data)
                n_pipe, t_pipe, ds = pipeline(rows, data)
            else:
                n_pipe, t_pipe, ds = pipeline(rows, data)
                n_loop, t_loop, c_loop = plain_loop(row_dicts, data)
            w_tasks, c_pipe = _task_seconds(ds)
            cpu_ratios.append(c_loop / c_pipe)
            assert n_loop == n_pipe
            ratio = (n_pipe / t_pipe) / (n_loop / t_loop)
            ratios.append(ratio)
            print(f"round {r}: plain decord loop {n_loop / t_loop:7.1f} frames/s ({t_loop:.2f} s) | "
                  f"Ray Data pipeline {n_pipe / t_pipe:7.1f} frames/s ({t_pipe:.2f} s) | ratio {ratio:.2f}x | "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            print(f"         CPU per frame: loop {1e3 * c_loop / n_loop:.1f} ms, pipeline decode tasks "
                  f"{1e3 * c_pipe / n_pipe:.1f} ms; pipeline: tasks busy {w_tasks / t_pipe:.2f} of "
                  f"{args.workers} slots, on CPU {c_pipe / w_tasks:.0%} of their run time")
        # Where the pipeline's time goes: Ray Data's per-operator wall and CPU time of the last round.
        print("\n".join(line for line in ds.stats().splitlines()
                        if any(k in line for k in ("Operator", "Remote wall", "Remote cpu", "Total time"))))
        print(f"ratio: best {max(ratios):.2f}x, median {sorted(ratios)[len(ratios) // 2]:.2f}x")
        # What the ratio would be if the decode tasks had their CPUs to themselves (an idle machine).
        cores = min(args.workers, os.cpu_count())
        print(f"contention-free estimate: {cores} x (loop CPU / task CPU per frame) = "
              f"{cores * sorted(cpu_ratios)[len(cpu_ratios) // 2]:.2f}x")
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
