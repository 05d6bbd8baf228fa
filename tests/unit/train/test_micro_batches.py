"""Micro-batching (raytrain.data.batch.TrainBatch + the global loss normalisation of raytrain.algos.losses):
a step's gradient is the same whether its sequences go in one pass or in several, by row count or packed
by a token budget (raytrain.train.step.micro_batch_groups), on the tiny Qwen2.5-VL with video and image prompts."""

from __future__ import annotations

import pytest
import torch

from raytrain.algos.losses import POLICY_LOSSES, policy_loss
from raytrain.config.sections import AlgorithmConfig, ModelConfig, TrainConfig
from raytrain.data.batch import TrainBatch, consecutive_rows, padded_tokens, response_positions, token_budget_rows
from raytrain.models.loading import load_family, load_policy
from raytrain.models.logprobs import first_response_position, masked_logprobs, token_logprobs
from raytrain.train.step import micro_batch_groups


@pytest.fixture(scope="module")
def model_and_family(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32")
    return load_policy(cfg).train(), load_family(cfg)


@pytest.fixture(scope="module")
def batch(media_prompts):
    """Six rows (two responses per prompt, videos and an image), uneven lengths, one row fully
    masked (an overlong-filtered response) and another partly."""
    gen = torch.Generator().manual_seed(0)
    prompts = [p for p in media_prompts for _ in range(2)]
    responses = [torch.randint(10, 200, (n,), generator=gen).tolist() for n in (5, 9, 3, 7, 4, 8)]
    mask = response_positions(prompts, responses)
    loss_mask = mask.clone()
    loss_mask[1] = 0
    loss_mask[4, -3:] = 0
    return TrainBatch(prompts, responses, {
        "old_logprobs": -torch.rand(mask.shape, generator=gen) * mask - 3.0 * mask,
        "advantages": torch.randn(mask.shape, generator=gen) * mask,
        "loss_mask": loss_mask,
    })


def test_response_positions_match_collate(batch, model_and_family):
    _, family = model_and_family
    full = family.collate(batch.prompts, batch.responses)
    assert torch.equal(response_positions(batch.prompts, batch.responses), full["response_mask"])


def test_one_vision_tower_call_gives_the_models_own_forward(batch, model_and_family):
    """`token_logprobs` encodes a batch's videos and image in one vision-tower call (what keeps
    ZeRO-3 ranks in step); the numbers are those of the model's own forward, which calls it twice."""
    model, family = model_and_family
    (inputs,) = batch.micro_batches(len(batch), family.collate)
    inputs = {k: v for k, v in inputs.items() if k not in ("old_logprobs", "advantages", "loss_mask")}
    assert "pixel_values" in inputs and "pixel_values_videos" in inputs
    calls = []
    hook = model.model.visual.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            logp = token_logprobs(family, model, inputs)
            assert len(calls) == 1
            logits = model(**{k: v for k, v in inputs.items() if k != "response_mask"}, use_cache=False).logits[:, :-1]
            assert len(calls) == 3
    finally:
        hook.remove()
    expected = torch.nn.functional.pad(masked_logprobs(logits, inputs["input_ids"][:, 1:], temperature=1.0, suppress_ids=family.suppress_ids), (1, 0))
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-5)


def _gradient(model, family, parts: list[dict], algo: AlgorithmConfig, num_tokens: float, num_seqs: float) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    total = 0.0
    for part in parts:
        inputs = {k: v for k, v in part.items() if k not in ("old_logprobs", "advantages", "loss_mask")}
        logp = token_logprobs(family, model, inputs)
        loss, _ = POLICY_LOSSES[algo.policy_loss](logp, part["old_logprobs"], part["advantages"], part["loss_mask"],
                                                  algo, num_tokens, num_seqs)
        loss.backward()
        total += float(loss.detach())
    return total, torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def test_the_trainer_projects_only_positions_from_the_first_response_token_on(batch, model_and_family):
    # `responses_only` (the train step's forward): the LM head runs on the positions from the batch's first
    # response token on, and every response token gets the log-prob the whole-row forward gives it.
    model, family = model_and_family
    (inputs,) = batch.micro_batches(len(batch), family.collate)
    inputs = {k: v for k, v in inputs.items() if k not in ("old_logprobs", "advantages", "loss_mask")}
    start = first_response_position(inputs["response_mask"])
    length = inputs["input_ids"].shape[1]
    assert 0 < start < length - 5  # media prompts: most of each row precedes its response
    projected = []
    hook = model.lm_head.register_forward_hook(lambda _, args, __: projected.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            full = token_logprobs(family, model, inputs)
            tail = token_logprobs(family, model, inputs, responses_only=True)
    finally:
        hook.remove()
    assert projected == [length, length - start + 1]
    response = inputs["response_mask"].bool()
    assert tail.shape == full.shape and (tail[:, :start] == 0).all()
    torch.testing.assert_close(tail[response], full[response], rtol=1e-5, atol=1e-6)
    assert first_response_position(torch.zeros(2, 7)) == 7


@pytest.mark.parametrize("policy_loss, loss_agg", [
    ("ppo_clip", "token-mean"), ("ppo_clip", "seq-mean-token-mean"), ("ppo_clip", "seq-mean-token-sum"), ("gspo", "token-mean"),
])
def test_micro_batches_give_the_whole_batch_gradient(batch, model_and_family, policy_loss, loss_agg):
    model, family = model_and_family
    algo = AlgorithmConfig(policy_loss=policy_loss, loss_agg=loss_agg, clip_low=0.2, clip_high=0.28)
    mask = batch.per_token["loss_mask"]
    num_tokens, num_seqs = float(mask.sum()), float((mask.sum(-1) > 0).sum())
    whole = batch.micro_batches(len(batch), family.collate)
    parts = batch.micro_batches(4, family.collate)
    assert len(whole) == 1 and [p["input_ids"].shape[0] for p in parts] == [4, 2]
    assert parts[1]["input_ids"].shape[1] < whole[0]["input_ids"].shape[1]  # each part padded to its own width
    assert "pixel_values_videos" in parts[0] and "pixel_values" in parts[1]  # pixels travel with their rows

    loss_whole, grad_whole = _gradient(model, family, whole, algo, num_tokens, num_seqs)
    loss_parts, grad_parts = _gradient(model, family, parts, algo, num_tokens, num_seqs)
    assert grad_whole.abs().sum() > 0
    assert loss_parts == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad_parts, grad_whole, rtol=1e-4, atol=1e-6)


def test_seq_count_only_for_seq_mean_modes():
    with pytest.raises(ValueError, match="num_seqs only applies"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), num_seqs=2.0)
    loss, _ = policy_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([1.0, 1.0]), torch.ones(2, 1),
                          loss_agg="seq-mean-token-sum", num_seqs=4.0)
    assert loss.item() == pytest.approx(-0.5)  # (-1 - 1) / 4, not / 2


def test_token_budget_packs_rows_longest_first_within_the_budget():
    lengths = [30, 10, 25, 12, 50, 9]
    groups = token_budget_rows(lengths, 60)
    # 50 alone (two rows of 50 exceed 60), 30 with 25 (2 x 30), then 12, 10 and 9 (3 x 12).
    assert groups == [[4], [0, 2], [3, 1, 5]]
    assert padded_tokens(lengths, groups) == 50 + 60 + 36
    # Two rows at a time in order pad 30|10, 25|12 and 50|9 to 210 tokens for the same 136.
    assert padded_tokens(lengths, consecutive_rows(6, 2)) == 210 and sum(lengths) == 136
    assert token_budget_rows([80, 20, 20], 60) == [[0], [1, 2]]  # a row over the budget is its own micro-batch
    assert token_budget_rows([], 60) == []


def test_token_budget_micro_batches_give_the_same_step_as_row_micro_batches(batch, model_and_family):
    model, family = model_and_family
    algo = AlgorithmConfig(clip_low=0.2, clip_high=0.28)
    mask = batch.per_token["loss_mask"]
    num_tokens, num_seqs = float(mask.sum()), float((mask.sum(-1) > 0).sum())
    lengths = batch.lengths()  # 57, 61, 55, 59 (videos), 44, 48 (the image)
    budget = 2 * max(lengths) + 8  # two rows of any length fit, three never do
    by_rows = micro_batch_groups(TrainConfig(micro_batch_size=4), batch.lengths())
    by_tokens = micro_batch_groups(TrainConfig(max_tokens_per_micro_batch=budget), batch.lengths())
    assert by_rows == [[0, 1, 2, 3], [4, 5]]
    # Rows of similar length paired, longest first: not the batch's order.
    assert sorted(i for g in by_tokens for i in g) == list(range(len(batch)))
    assert [len(g) for g in by_tokens] == [2, 2, 2] and by_tokens != consecutive_rows(len(batch), 2)
    assert all(len(g) * max(lengths[i] for i in g) <= budget for g in by_tokens)
    assert padded_tokens(lengths, by_tokens) < padded_tokens(lengths, by_rows)

    loss_rows, grad_rows = _gradient(model, family, batch.collate_rows(by_rows, family.collate), algo, num_tokens, num_seqs)
    loss_tokens, grad_tokens = _gradient(model, family, batch.collate_rows(by_tokens, family.collate), algo, num_tokens, num_seqs)
    assert grad_rows.abs().sum() > 0
    # The same loss and gradient, so the same update from the same optimizer state.
    assert loss_tokens == pytest.approx(loss_rows, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad_tokens, grad_rows, rtol=1e-4, atol=1e-6)
