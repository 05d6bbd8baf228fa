"""A test run's records, and killing this pytest session's own Ray processes as a crash would."""

from __future__ import annotations

import json
import random
from pathlib import Path

import psutil


def metrics_records(output_dir) -> list[dict]:
    """The records of `output_dir/metrics.jsonl`, in file order."""
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def kill_one(process_title: str, rng: random.Random | None = None) -> int | None:
    """SIGKILL one process of this session's Ray titled `process_title` (e.g. `ray::RayTrainWorker`), the
    first found or, given `rng`, a random one; its pid, None when there is none. Only descendants of this
    pytest process (`ray.init` started the raylet here) are candidates, never a process of another Ray on
    the machine."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if process_title in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    for proc in (rng.sample(found, len(found)) if rng else found):
        try:
            proc.kill()
            return proc.pid
        except psutil.NoSuchProcess:
            continue
    return None
