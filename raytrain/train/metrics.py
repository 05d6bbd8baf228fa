"""A step's metrics: every rank's stats summed by key, read by the algorithm, logged to
`run.output_dir/metrics.jsonl` (and from that record to the trackers and Ray's metrics) and shown on the console."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from raytrain.train.algorithms import Algorithm
from raytrain.train.checkpoint import TrainerState

SHOWN = ("loss", "reward/total", "reward/accuracy", "reward/format", "groups_kept", "groups_dropped", "sft_nll")
BAR_SHOWN = ("reward/total", "reward/accuracy", "sft_nll")  # beside a progress bar: what says it learns


def sum_by_key(local: dict) -> dict:
    """Every rank's `local` added up key by key, nested dicts too; keys ending in `_min` take the least
    value instead. A rank without data this step sends fewer keys (no rewards, no loss stats), so the keys
    are whatever any rank has."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    totals: dict = {}
    for part in gathered:
        _add(totals, part)
    return totals


def _add(totals: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _add(totals.setdefault(k, {}), v)
        elif k.endswith("_min"):
            totals[k] = min(totals.get(k, v), v)
        else:
            totals[k] = totals.get(k, 0.0) + v


def step_metrics(algorithm: Algorithm, state: TrainerState, stats: dict, global_tokens: float, media_skipped: int) -> dict:
    """The step's global metrics from this rank's `stats` (the algorithm's `collect` and `train_step`'s)."""
    # `rollout_version` and the `time/` phases stay this rank's own (every rank checked its rollouts'
    # staleness itself; rank 0's phases are logged beside its own step timings).
    own = {k: v for k, v in stats.items() if k == "rollout_version" or k.startswith("time/")}
    local = {k: v for k, v in stats.items() if k not in own}
    totals = sum_by_key({**local, "media_skipped": media_skipped})
    metrics = {"step": state.step, "policy_version": state.version, "tokens": global_tokens,
               "media_skipped": int(totals["media_skipped"]), **{k: v for k, v in own.items() if k.startswith("time/")}}
    # `raytrain.train.step.train_step`'s guard: NaN or infinite loss inputs (ranks that saw them) and passes.
    metrics.update({k: int(totals.get(k, 0)) for k in ("step_skipped", "passes_dropped")})
    if "rollout_version" in stats:
        # The step trained policy version `state.version - 1` on these rollouts.
        metrics["rollout_version"] = stats["rollout_version"]
        metrics["rollout_staleness"] = state.version - 1 - stats["rollout_version"]
    if "rollout_version_min" in totals:
        # Over every rank: how many versions the oldest sample trained on is behind (<= algorithm.max_staleness).
        metrics["rollout_staleness_max"] = state.version - 1 - int(totals["rollout_version_min"])
    if totals.get("padded_tokens"):
        # The share of the step's forward/backward tokens that were padding (`train.max_tokens_per_micro_batch` lowers it).
        metrics["micro_batches"] = int(totals["micro_batches"])
        metrics["padding_fraction"] = 1.0 - totals["row_tokens"] / totals["padded_tokens"]
    metrics.update(algorithm.report(totals, global_tokens))
    return metrics


def startup_metrics(driver: dict[str, float], entered: float, ready: float, stepped: float) -> dict[str, float]:
    """Where the time to a worker group's first step went, in seconds, from wall-clock marks (`time.time()`:
    the driver's and rank 0's clocks, one machine's or kept in step by NTP): `driver` holds those of
    `raytrain.train.launch.train` (`started`, `ray_ready`, `fit`); `entered`, `ready` and `stepped` are when rank 0
    entered the worker loop, had its policy, DeepSpeed engine and resumed state, and ended its first step."""
    return {"startup/ray_s": driver["ray_ready"] - driver["started"],  # Ray started or joined, placement checked
            "startup/actors_and_data_s": driver["fit"] - driver["ray_ready"],  # rollout/reward actors loaded, dataset built
            "startup/train_workers_s": entered - driver["fit"],  # Ray Train's controller and worker group, process group
            "startup/model_s": ready - entered,  # policy loaded, DeepSpeed engine, checkpoint resumed, engines synced
            "startup/first_step_s": stepped - ready,  # the first batch's data, rollouts, rewards and update
            "startup/total_s": stepped - driver["started"]}


def log_metrics(out_dir: Path, metrics: dict) -> dict:
    """Append the step's record, floats rounded, to `metrics.jsonl`; returns that record (what the trackers
    and Ray's metrics get, so every view holds the same numbers)."""
    record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def keep_records_through(out_dir: Path, step: int) -> None:
    """Drop the `metrics.jsonl` records of steps after `step`. A run resumed from the checkpoint of `step`
    trains (and logs) the later steps again: the file keeps one record per step, the one that counts."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def step_text(record: dict, keys: tuple[str, ...] = SHOWN) -> str:
    """The figures of `keys` the record has, as `name value | ...`."""
    shown = {k: record[k] for k in keys if k in record}
    return " | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
