"""The clipped policy loss (Clip-Higher, dual clip, aggregation modes), KL estimators and masked means."""

import math

import pytest
import torch

from raytrain.algos.losses import kl_penalty, masked_mean, policy_loss


def _loss(log_ratio, advantages, mask=None, **kwargs):
    logprobs = torch.tensor(log_ratio, dtype=torch.float64, requires_grad=True)
    old = torch.zeros_like(logprobs)
    mask = torch.ones_like(logprobs) if mask is None else torch.tensor(mask)
    loss, stats = policy_loss(logprobs, old, torch.tensor(advantages, dtype=torch.float64), mask, **kwargs)
    return loss, stats, logprobs


@pytest.mark.parametrize(
    "ratio, advantage, expected_loss, clipped",
    [
        (1.5, 1.0, -1.28, True),  # upper clip at 1 + 0.28
        (1.25, 1.0, -1.25, False),  # inside the raised upper bound (0.2 would clip)
        (0.5, -1.0, 0.8, True),  # lower clip at 1 - 0.2
        (0.5, 1.0, -0.5, False),  # min keeps the unclipped (more pessimistic) term
        (1.5, -1.0, 1.5, False),
    ],
)
def test_policy_loss_clip_higher(ratio, advantage, expected_loss, clipped):
    loss, stats, _ = _loss([[math.log(ratio)]], [advantage])
    assert loss.item() == pytest.approx(expected_loss)
    assert stats["clip_frac"] == (1.0 if clipped else 0.0)
    assert stats["ratio_mean"] == pytest.approx(ratio)
    assert stats["approx_kl"] == pytest.approx(-math.log(ratio))


@pytest.mark.parametrize(
    "ratio, advantage, expected_loss, clipped",
    [
        (1.5, 1.0, -1.5, False),  # no upper clip: -r A (0.28 would give -1.28)
        (3.0, 1.0, -3.0, False),
        (0.5, -1.0, 0.8, True),  # the lower clip stays: -(1 - 0.2) A
        (3.0, -1.0, 3.0, False),
    ],
)
def test_policy_loss_without_upper_clip(ratio, advantage, expected_loss, clipped):
    loss, stats, logprobs = _loss([[math.log(ratio)]], [advantage], clip_high=None)
    assert loss.item() == pytest.approx(expected_loss)
    assert stats["clip_frac"] == (1.0 if clipped else 0.0)
    loss.backward()  # d(-r A)/d logp = -r A where unclipped; 0 on the clipped branch
    assert logprobs.grad.item() == pytest.approx(0.0 if clipped else -ratio * advantage)


def test_policy_loss_aggregation_modes():
    # Responses of 1 and 3 tokens, ratio 1: per-token losses -1 | +1 +1 +1.
    args = ([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [1.0, -1.0], [[1, 0, 0], [1, 1, 1]])
    assert _loss(*args)[0].item() == pytest.approx(0.5)  # (-1 + 3) / 4 tokens
    assert _loss(*args, loss_agg="seq-mean-token-mean")[0].item() == pytest.approx(0.0)  # (-1 + 1) / 2
    assert _loss(*args, loss_agg="seq-mean-token-sum")[0].item() == pytest.approx(1.0)  # (-1 + 3) / 2
    assert _loss(*args, num_tokens=8)[0].item() == pytest.approx(0.25)  # (-1 + 3) / 8


def test_policy_loss_seq_modes_skip_empty_responses():
    args = ([[0.0, 0.0], [0.0, 0.0]], [2.0, 5.0], [[1, 1], [0, 0]])
    assert _loss(*args, loss_agg="seq-mean-token-mean")[0].item() == pytest.approx(-2.0)
    assert _loss(*args, loss_agg="seq-mean-token-sum")[0].item() == pytest.approx(-4.0)


def test_policy_loss_token_advantages():
    loss, _, _ = _loss([[0.0, 0.0]], [[1.0, -3.0]])
    assert loss.item() == pytest.approx(1.0)  # (-1 + 3) / 2


def test_policy_loss_dual_clip():
    # ratio e^2 = 7.389: A = -1 costs 7.389 unclipped, capped at c = 3; A = +1 clips to -1.28.
    loss, _, _ = _loss([[2.0], [2.0]], [-1.0, 1.0], loss_agg="seq-mean-token-sum", clip_ratio_c=3.0)
    assert loss.item() == pytest.approx((3.0 - 1.28) / 2)
    loss, _, _ = _loss([[2.0]], [-1.0])
    assert loss.item() == pytest.approx(math.exp(2.0))
    with pytest.raises(ValueError, match="clip_ratio_c"):
        _loss([[2.0]], [-1.0], clip_ratio_c=1.0)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_policy_loss_all_masked_is_zero_with_grad(loss_agg):
    loss, stats, logprobs = _loss([[0.3, 50.0]], [1.0], [[0, 0]], loss_agg=loss_agg)
    assert loss.item() == 0.0
    loss.backward()
    assert logprobs.grad.tolist() == [[0.0, 0.0]]
    assert stats == {"clip_frac": 0.0, "ratio_mean": 0.0, "approx_kl": 0.0}


def test_policy_loss_zero_global_tokens():
    loss, _, _ = _loss([[0.3]], [1.0], [[0]], num_tokens=0)
    assert loss.item() == 0.0 and loss.requires_grad


def test_policy_loss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_tokens"):
        _loss([[0.0]], [1.0], loss_agg="seq-mean-token-sum", num_tokens=4)
    with pytest.raises(ValueError, match="loss_agg"):
        _loss([[0.0]], [1.0], loss_agg="sum")


@pytest.mark.parametrize("advantage, direction", [(-1.0, -1), (1.0, 1)])
def test_policy_loss_gradient_moves_logprob_with_advantage(advantage, direction):
    loss, _, logprobs = _loss([[0.0]], [advantage])
    loss.backward()
    with torch.no_grad():
        stepped = logprobs - 0.1 * logprobs.grad
    assert torch.sign(stepped - logprobs).item() == direction


def test_kl_penalty_hand_values():
    logprobs = torch.tensor([-1.0, -2.0, -1.5])
    ref = torch.tensor([-2.0, -1.0, -1.5])  # logp - ref = 1, -1, 0
    assert kl_penalty(logprobs, ref, "k1").tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert kl_penalty(logprobs, ref, "k2").tolist() == pytest.approx([0.5, 0.5, 0.0])
    # exp(-1) + 1 - 1 = 0.367879; exp(1) - 1 - 1 = 0.718282
    assert kl_penalty(logprobs, ref, "k3").tolist() == pytest.approx([0.367879, 0.718282, 0.0], abs=1e-6)
    with pytest.raises(ValueError):
        kl_penalty(logprobs, ref, "k4")


def test_masked_mean_ignores_masked_nan():
    x = torch.tensor([1.0, 3.0, float("nan")])
    assert masked_mean(x, torch.tensor([1, 1, 0])).item() == 2.0
    assert masked_mean(x, torch.zeros(3)).item() == 0.0
