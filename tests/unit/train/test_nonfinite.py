"""NaN and infinity at run time (issue 17 item 6): a reward that comes out NaN or infinite drops its
group before the loss, counted; a step whose loss inputs are not finite is skipped, reported, and
leaves the weights alone. The reward scorer runs as a plain class; the step on one gloo rank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actors.reward import RewardScorer
from raytrain.config import parse_config
from raytrain.config.sections import RewardConfig
from raytrain.data.batch import Prompt, Sample
from raytrain.models.tiny import build_tiny_processor
from raytrain.train.experience import Group, finite_groups, rl_batch, rollout_metrics, rollout_stats
from tests.helpers.train_batches import rank_batch

ANSWERS = ["<think>seam</think><answer>fake</answer>", "<think>ok</think><answer>real</answer>"]


def _groups(tokenizer) -> list[Group]:
    """Three prompts of two responses each, scored by the reward actor's scorer (format, overlong, accuracy)."""
    scorer = RewardScorer(RewardConfig(), "word")
    groups = []
    for k in range(3):
        prompt = Prompt(key=f"k{k}", id=f"k{k}", path=f"{k}.mp4", label="fake", category="faces",
                        input_ids=np.arange(3, dtype=np.int64), pixel_values=np.zeros((0, 0), np.float32),
                        grid_thw=np.zeros(3, np.int64), is_video=True)
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ANSWERS]
        samples = [Sample(i, [-0.5] * len(i), t, False, 0) for i, t in zip(ids, ANSWERS)]
        groups.append(Group(prompt, samples, scorer.score(ANSWERS, [len(i) for i in ids], ["fake", "fake"])))
    return groups


def test_a_nan_or_infinite_reward_drops_its_group_before_the_loss():
    tokenizer = build_tiny_processor().tokenizer
    groups = _groups(tokenizer)
    assert all(sc.finite() for g in groups for sc in g.scores)
    # A component gone wrong: NaN in one response of group 0, infinity in the total of group 2.
    groups[0].scores[1].components["accuracy"] = math.nan
    groups[2].scores[0].total = math.inf
    kept, dropped = finite_groups(groups)
    assert dropped == 2 and [g.prompt.key for g in kept] == ["k1"]
    cfg = parse_config({"model": {"path": "tiny"}, "data": {"manifest": "m.parquet"},
                        "rollout": {"sampling": {"group_size": 2}}})
    batch = rl_batch(cfg, kept, tokenizer, estimator="grpo", paragraphs=False)
    assert len(batch) == 2 and all(bool(torch.isfinite(t).all()) for t in batch.per_token.values())
    # Counted, and the step's reward metrics come from the finite groups alone.
    stats = {**rollout_stats(kept), "groups_drawn": 3, "groups_dropped": 0, "groups_kept": 1, "generation_rounds": 1,
             "groups_nonfinite": dropped}
    metrics = rollout_metrics(stats)
    assert metrics["groups_nonfinite"] == 2 and all(math.isfinite(v) for v in metrics.values())


def test_a_step_with_nan_inputs_is_skipped_and_weights_stay(base_config_dict, media_prompts, gloo_rank):
    from raytrain.models.loading import load_family, load_policy
    from raytrain.train.algorithms import ALGORITHMS
    from raytrain.train.step import deepspeed_engine, train_step

    cfg = parse_config(base_config_dict)
    family = load_family(cfg.model)
    (padding,) = family.padding_batch().micro_batches(1, family.collate)
    engine = deepspeed_engine(cfg, load_policy(cfg.model))
    engine.train()
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}

    def step(batch):
        mask = batch.per_token["loss_mask"]
        return train_step(cfg, ALGORITHMS["dapo"], family, engine, None, batch, float(mask.sum()),
                          float((mask.sum(-1) > 0).sum()), 1, padding)

    poisoned = rank_batch(media_prompts, 0, seed=1)
    poisoned.per_token["advantages"][0, poisoned.per_token["loss_mask"][0].nonzero()[0]] = math.nan
    stats = step(poisoned)
    assert stats["step_skipped"] == 1 and stats["ranks_trained"] == 0
    assert all(torch.equal(before[n], p) for n, p in engine.module.named_parameters() if n in before)
    stats = step(rank_batch(media_prompts, 0, seed=1))  # the same batch, finite: trains
    assert stats["step_skipped"] == 0 and stats["passes_dropped"] == 0 and math.isfinite(stats["loss"])
    changed = [n for n, p in engine.module.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert changed and all(bool(torch.isfinite(p).all()) for p in engine.module.parameters())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_score_finite_sees_paragraph_rewards(value):
    from rewards.score import ParagraphScore, Score

    assert not Score({"accuracy": 1.0}, 1.0, paragraphs=[ParagraphScore(0, 3, value)]).finite()
    assert Score({"accuracy": 1.0}, 1.0, paragraphs=[ParagraphScore(0, 3, 0.5)]).finite()
