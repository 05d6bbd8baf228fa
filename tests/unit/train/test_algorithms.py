"""The training algorithms (raytrain.train.algorithms) and the batches and metrics they make from
rollouts (raytrain.train.experience, raytrain.train.metrics), without Ray or a model."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pytest
import torch
import torch.distributed as dist

from raytrain.algos.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs
from raytrain.algos.losses import POLICY_LOSSES, kl_penalty, token_nll
from raytrain.config import AlgorithmConfig, parse_config
from raytrain.data.batch import Prompt, Sample
from raytrain.models.tiny import build_tiny_processor
from raytrain.train.algorithms import ALGORITHMS
from raytrain.train.checkpoint import TrainerState
from raytrain.train.experience import Group, paragraph_tensors, rollout_stats
from raytrain.train.metrics import log_metrics, step_metrics, step_text
from rewards.score import ParagraphScore, Score

TEXT = "The jaw line shows a blending seam in frame two.\n\n<answer>fake</answer>"


def _config(name: str = "dapo", **algorithm):
    return parse_config({
        "model": {"path": "tiny", "dtype": "float32"},
        "data": {"manifest": "manifest.parquet"},
        "rollout": {"sampling": {"group_size": 2, "temperature": 0.7}},
        "reward": {"weights": {"format": 1.0, "accuracy": 1.0, "paragraph": 1.0}},
        "algorithm": {"name": name, **algorithm},
    })


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_processor().tokenizer


def _prompt(key: str, category: str) -> Prompt:
    return Prompt(key=key, id=key, path=f"{key}.mp4", label="fake", category=category,
                  input_ids=np.arange(3, dtype=np.int64), pixel_values=np.zeros((0, 0), np.float32),
                  grid_thw=np.zeros(3, np.int64), is_video=True)


@pytest.fixture(scope="module")
def groups(tokenizer) -> list[Group]:
    """Two prompts of two responses: one group differs in accuracy, one does not; one response is
    truncated, one has no paragraphs."""
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    answer = TEXT.index("<answer>")

    def sample(n: int, truncated: bool = False) -> Sample:
        return Sample(ids[:n], [-0.5] * n, tokenizer.decode(ids[:n]), truncated, 3)

    def score(accuracy: float, paragraphs: list[ParagraphScore]) -> Score:
        return Score({"format": 0.0, "accuracy": accuracy}, total=accuracy, paragraphs=paragraphs)

    two = [ParagraphScore(0, answer - 2, 0.25), ParagraphScore(answer, len(TEXT), 1.0)]
    return [
        Group(_prompt("a", "faces"), [sample(len(ids)), sample(4)], [score(1.0, two), score(0.0, [])]),
        Group(_prompt("b", "scenes"), [sample(len(ids), truncated=True), sample(len(ids))],
              [score(1.0, two), score(1.0, two[1:])]),
    ]


def test_registry_matches_the_config_choices():
    assert set(get_args(AlgorithmConfig.model_fields["name"].annotation)) == set(ALGORITHMS)


def test_what_each_algorithm_asks_for():
    dapo, prpo, sft = ALGORITHMS["dapo"], ALGORITHMS["prpo"], ALGORITHMS["sft"]
    assert dapo.needs_rollouts and prpo.needs_rollouts and not sft.needs_rollouts
    with_kl = AlgorithmConfig(kl_coef=0.1)
    assert dapo.uses_reference(with_kl) and prpo.uses_reference(with_kl) and not sft.uses_reference(with_kl)
    assert not dapo.uses_reference(AlgorithmConfig())
    # RL log-probs use the rollout's temperature (ratios against the sampling log-probs); SFT the model's own.
    assert dapo.logprob_temperature(_config()) == prpo.logprob_temperature(_config("prpo")) == 0.7
    assert sft.logprob_temperature(_config("sft")) == 1.0


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_dapo_batch_uses_the_configured_estimator_and_masks_truncated_responses(groups, tokenizer, estimator):
    cfg = _config(advantage_estimator=estimator, overlong_filter=True)
    batch = ALGORITHMS["dapo"].batch(cfg, groups, tokenizer)
    response_mask = (batch.per_token["old_logprobs"] != 0).float()
    assert batch.prompts == [groups[0].prompt] * 2 + [groups[1].prompt] * 2
    assert response_mask[:, :3].sum() == 0 and response_mask.sum() == sum(len(s.token_ids) for g in groups for s in g.samples)
    inputs = AdvantageInputs(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, response_mask)
    expected = ADVANTAGE_ESTIMATORS[estimator](inputs, cfg.algorithm)
    torch.testing.assert_close(batch.per_token["advantages"], expected)
    assert batch.per_token["advantages"][2:].eq(0).all()  # the constant group
    assert batch.per_token["loss_mask"].sum(-1).tolist() == [len(groups[0].samples[0].token_ids), 4, 0,
                                                             len(groups[1].samples[1].token_ids)]


def test_prpo_batch_adds_paragraph_tensors_and_uses_the_prpo_estimator(groups, tokenizer):
    cfg = _config("prpo", prpo_outcome_weight=0.5)
    batch = ALGORITHMS["prpo"].batch(cfg, groups, tokenizer)
    samples, scores = [s for g in groups for s in g.samples], [sc for g in groups for sc in g.scores]
    response_mask = (batch.per_token["old_logprobs"] != 0).float()
    rewards, masks = paragraph_tensors(samples, scores, response_mask, tokenizer)
    assert rewards.tolist() == [[0.25, 1.0], [0.0, 0.0], [0.25, 1.0], [1.0, 0.0]]
    inputs = AdvantageInputs(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, response_mask, rewards, masks)
    torch.testing.assert_close(batch.per_token["advantages"], ADVANTAGE_ESTIMATORS["prpo"](inputs, cfg.algorithm))
    outcome = ALGORITHMS["dapo"].batch(_config(), groups, tokenizer).per_token["advantages"]
    assert not torch.equal(batch.per_token["advantages"], outcome)


def test_losses_sft_token_nll_and_rl_policy_loss_plus_kl():
    gen = torch.Generator().manual_seed(0)
    logp, ref, old = (-torch.rand(2, 5, generator=gen) for _ in range(3))
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float32)
    batch = {"old_logprobs": old, "advantages": torch.randn(2, 5, generator=gen) * mask, "loss_mask": mask}

    loss, stats = ALGORITHMS["sft"].loss(AlgorithmConfig(), logp, None, batch, 3.0, 1.0)
    want, want_stats = token_nll(logp, mask, 3.0)
    assert loss.item() == want.item() == pytest.approx(float(-(logp * mask).sum() / 3.0)) and stats == want_stats

    plain = AlgorithmConfig()
    loss, stats = ALGORITHMS["dapo"].loss(plain, logp, None, batch, 3.0, 1.0)
    want, want_stats = POLICY_LOSSES["ppo_clip"](logp, old, batch["advantages"], mask, plain, 3.0, 1.0)
    assert loss.item() == want.item() and stats == want_stats and "kl" not in stats

    with_kl = AlgorithmConfig(kl_coef=0.1, kl_kind="k3")
    loss, stats = ALGORITHMS["prpo"].loss(with_kl, logp, ref, batch, 3.0, 1.0)
    kl = kl_penalty(logp, ref, "k3")
    assert loss.item() == pytest.approx(want.item() + 0.1 * float((kl * mask).sum()) / 3.0)
    assert stats["kl"] == pytest.approx(float((kl * mask).sum() / mask.sum()))


def _two_ranks(monkeypatch, other: dict) -> None:
    """Rank 0 of two: the other rank's stats are `other` (what its `step_metrics` sends)."""
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, local: out.__setitem__(slice(None), [local, other]))


def test_rl_step_metrics_sum_the_ranks_by_key_when_one_has_no_data(groups, monkeypatch):
    stats = {**rollout_stats(groups), "rollout_version": 3, "groups_drawn": 3, "groups_dropped": 1, "groups_kept": 2,
             "generation_rounds": 2, "groups_nonfinite": 0, "loss": 0.5, "ranks_trained": 1.0, "loss_sums": {},
             "loss_means": {"clip_frac": 0.25, "ratio_mean": 1.0, "approx_kl": 0.0, "kl": 0.125},
             "time/data_s": 0.25, "time/reward_s": 0.5}
    # The other rank ran out of data: no rewards, no loss stats, and no rollout version.
    empty = {**rollout_stats([]), "groups_drawn": 0, "groups_dropped": 0, "groups_kept": 0, "generation_rounds": 0,
             "groups_nonfinite": 0, "loss": 0.0, "ranks_trained": 0.0, "loss_sums": {}, "loss_means": {}, "media_skipped": 2,
             "time/data_s": 2.0, "time/reward_s": 0.0}
    _two_ranks(monkeypatch, empty)
    metrics = step_metrics(ALGORITHMS["dapo"], TrainerState(step=4, version=4), stats, 40.0, 1)
    tokens = sum(len(s.token_ids) for g in groups for s in g.samples)
    assert metrics == {
        "step": 4, "policy_version": 4, "tokens": 40.0, "media_skipped": 3, "rollout_version": 3, "rollout_staleness": 0,
        "step_skipped": 0, "passes_dropped": 0, "loss": 0.5,
        "time/data_s": 0.25, "time/reward_s": 0.5,  # this rank's own phases, not summed over ranks
        "responses": 4, "groups_drawn": 3, "groups_dropped": 1, "groups_kept": 2, "generation_rounds": 2, "groups_nonfinite": 0,
        "response_tokens_mean": tokens / 4, "truncated_mean": 0.25,
        # Mean paragraph rewards 0.625, 0 (no paragraphs), 0.625 and 1.
        "reward/format": 0.0, "reward/accuracy": 0.75, "reward/total": 0.75, "reward/paragraph": 0.5625,
        "reward/accuracy/faces": 0.5, "reward/accuracy/scenes": 1.0,
        "clip_frac": 0.25, "ratio_mean": 1.0, "approx_kl": 0.0, "kl": 0.125,
    }


def test_padding_fraction_over_both_ranks(monkeypatch):
    stats = {"prompts": 3, "loss": 1.5, "ranks_trained": 1.0, "loss_sums": {"sft_nll_sum": 30.0}, "loss_means": {},
             "micro_batches": 2.0, "row_tokens": 300.0, "padded_tokens": 400.0}
    _two_ranks(monkeypatch, {**stats, "micro_batches": 1.0, "row_tokens": 90.0, "padded_tokens": 100.0, "media_skipped": 0})
    metrics = step_metrics(ALGORITHMS["sft"], TrainerState(step=1, version=1), stats, 25.0, 0)
    # 110 of the 500 tokens the three passes computed were padding.
    assert metrics["micro_batches"] == 3 and metrics["padding_fraction"] == pytest.approx(110 / 500)


def test_sft_step_metrics(monkeypatch):
    stats = {"prompts": 3, "loss": 1.5, "ranks_trained": 1.0, "loss_sums": {"sft_nll_sum": 30.0}, "loss_means": {}}
    _two_ranks(monkeypatch, {**stats, "prompts": 2, "loss": 1.0, "loss_sums": {"sft_nll_sum": 20.0}, "media_skipped": 0})
    metrics = step_metrics(ALGORITHMS["sft"], TrainerState(step=1, version=1), stats, 25.0, 0)
    # `loss`: the ranks' losses summed; `sft_nll`: the mean over all 25 target tokens.
    assert metrics == {"step": 1, "policy_version": 1, "tokens": 25.0, "media_skipped": 0, "loss": 2.5, "prompts": 5,
                       "sft_nll": 2.0, "step_skipped": 0, "passes_dropped": 0}


def test_log_metrics_appends_rounded_json_and_returns_the_record(tmp_path):
    metrics = {"step": 2, "loss": 0.123456789, "reward/total": 0.5, "groups_kept": 3, "time/rollout_s": 1.0, "time/train_s": 0.5}
    first = log_metrics(tmp_path / "out", metrics)
    log_metrics(tmp_path / "out", {**metrics, "step": 3})
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3] and records[0]["loss"] == 0.123457 and records[0] == first
    assert step_text(first) == "loss 0.123 | reward/total 0.500 | groups_kept 3"
