"""Held-out evaluation: greedy answers from rollout actors over a manifest split, and their metrics."""

from __future__ import annotations

import ray
from tqdm import tqdm

from actors.rollout import start_rollout_actors
from raytrain.config import Config
from raytrain.data import build_dataset, prompts_from_batch, split_rows
from raytrain.launch import absolute_paths, init_ray
from raytrain.metrics import classification_metrics, per_category
from rewards.answer import parse_answer
from rewards.outcome import format_reward

_BATCH = 8


def evaluate(cfg: Config, *, split: str | None = None) -> dict:
    """Metrics of the policy at `cfg.model.path` on `split` (default: the eval split).

    Returns {"metrics", "per_category", "skipped", "predictions"}; unreadable media are
    listed in "skipped" and never counted as wrong answers.
    """
    cfg = absolute_paths(cfg)
    init_ray(cfg)
    split = split or cfg.data.eval_split
    rows = split_rows(cfg.data, split, seed=cfg.run.seed)
    actors = start_rollout_actors(cfg.model, cfg.rollout, data=cfg.data)
    predictions, skipped = [], []
    try:
        pending = []
        batches = build_dataset(cfg, rows).iter_batches(batch_size=_BATCH, batch_format="numpy")
        with tqdm(total=rows.num_rows, desc=f"evaluate {split}", unit="item") as bar:
            for i, batch in enumerate(batches):
                prompts, bad = prompts_from_batch(batch)
                skipped += bad
                bar.update(len(bad))
                if prompts:
                    actor = actors[i % len(actors)]
                    pending.append((prompts, actor.generate.remote(prompts, cfg.rollout.sampling, greedy=True)))
                # Keep at most one request in flight per actor, so decoding overlaps generation.
                while len(pending) >= len(actors):
                    predictions += _collect(*pending.pop(0), cfg)
                    bar.update(len(predictions) + len(skipped) - bar.n)
            for item in pending:
                predictions += _collect(*item, cfg)
            bar.update(len(predictions) + len(skipped) - bar.n)
    finally:
        for actor in actors:
            ray.kill(actor)
    if not predictions:
        raise RuntimeError(f"no readable media in split {split!r} of {cfg.data.manifest}")
    labels = [p["label"] for p in predictions]
    answers = [p["answer"] for p in predictions]
    metrics = classification_metrics(labels, answers)
    metrics["format_compliance"] = sum(p["format_ok"] for p in predictions) / len(predictions)
    metrics["skipped"] = len(skipped)
    return {
        "metrics": metrics,
        "per_category": per_category(labels, answers, [p["category"] for p in predictions]),
        "skipped": skipped,
        "predictions": predictions,
    }


def _collect(prompts, ref, cfg: Config) -> list[dict]:
    out = []
    for prompt, (sample,) in zip(prompts, ray.get(ref)):
        out.append({
            "id": prompt.id,
            "path": prompt.path,
            "label": prompt.label,
            "category": prompt.category,
            "response": sample.text,
            "answer": parse_answer(sample.text, cfg.data.answer_format),
            "format_ok": format_reward(sample.text) == 0.0,
        })
    return out
