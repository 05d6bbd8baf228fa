"""A step's metrics: every rank's stats summed by key, read by the algorithm, logged to
`run.output_dir/metrics.jsonl` and printed on one line."""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from raytrain.train.algorithms import Algorithm
from raytrain.train.checkpoint import TrainerState

SHOWN = ("loss", "reward/total", "reward/accuracy", "reward/format", "groups_kept", "groups_dropped", "sft_nll")


def sum_by_key(local: dict) -> dict:
    """Every rank's `local` added up key by key, nested dicts too. A rank without data this step sends
    fewer keys (no rewards, no loss stats), so the keys are whatever any rank has."""
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
        else:
            totals[k] = totals.get(k, 0.0) + v


def step_metrics(algorithm: Algorithm, state: TrainerState, stats: dict, global_tokens: float, media_skipped: int) -> dict:
    """The step's global metrics from this rank's `stats` (the algorithm's `collect` and `train_step`'s)."""
    # `rollout_version` stays this rank's own: every rank checked its rollouts' staleness itself.
    local = {k: v for k, v in stats.items() if k != "rollout_version"}
    totals = sum_by_key({**local, "media_skipped": media_skipped})
    metrics = {"step": state.step, "policy_version": state.version, "tokens": global_tokens,
               "media_skipped": int(totals["media_skipped"])}
    if "rollout_version" in stats:
        metrics["rollout_version"] = stats["rollout_version"]
    metrics.update(algorithm.report(totals, global_tokens))
    return metrics


def log_metrics(out_dir: Path, metrics: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}) + "\n")
    shown = {k: metrics[k] for k in SHOWN if k in metrics}
    text = " | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    print(f"[train] step {metrics['step']} | {text} | {metrics['time/rollout_s'] + metrics['time/train_s']:.1f}s", flush=True)
