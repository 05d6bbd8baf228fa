"""Group advantages (GRPO, Dr.GRPO) and dynamic sampling, against hand-computed values."""

import pytest
import torch

from raytrain.algos.advantages import group_advantages, informative_groups, paragraph_advantages


def test_group_advantages_hand_computed():
    # mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +-0.5 / 0.57735 = +-0.866025
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4)
    assert adv.tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)


def test_group_advantages_groups_are_independent():
    # Group 1 is constant -> 0. Group 2: mean 0.25, unbiased std 0.5.
    adv = group_advantages(torch.tensor([1, 1, 1, 1, 0, 1, 0, 0]), 4)
    assert adv.tolist() == pytest.approx([0, 0, 0, 0, -0.5, 1.5, -0.5, -0.5], abs=1e-5)


def test_group_advantages_dr_grpo_does_not_scale():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 4, scale="none")
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5]


@pytest.mark.parametrize("n, group_size", [(6, 4), (4, 1), (4, 0)])
def test_group_advantages_rejects_bad_group_size(n, group_size):
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(n), group_size)


def test_informative_groups():
    values = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0])
    assert informative_groups(values, 4).tolist() == [False, True]
    assert informative_groups(values, 2).tolist() == [False, False, True, False]
    with pytest.raises(ValueError):
        informative_groups(values, 3)


def test_constant_group_gets_exactly_zero_advantages_in_float32():
    # 0.7 is not a float32: the group mean rounds to a neighbour, and (R - mean) / (std + eps) was
    # ~0.056 (GRPO) and ~0.856 (PRPO, eps 1e-8) for every response of a group that carries no signal.
    rewards = torch.full((8,), 0.7)
    assert group_advantages(rewards, 8).tolist() == [0.0] * 8
    assert group_advantages(rewards, 8, scale="none").tolist() == [0.0] * 8
    assert group_advantages(torch.cat([rewards, torch.tensor([0.0, 1.0] * 4)]), 8)[:8].tolist() == [0.0] * 8


def test_constant_paragraph_pool_and_outcome_fallback_get_exactly_zero_in_float32():
    rewards, group = torch.full((8,), 0.7), torch.zeros(8, dtype=torch.long)
    pooled = paragraph_advantages(rewards.unsqueeze(1), torch.ones(8, 1, 3, dtype=torch.bool), group)
    assert pooled.eq(0).all(), pooled
    fallback = paragraph_advantages(torch.zeros(8, 1), torch.zeros(8, 1, 3, dtype=torch.bool), group,
                                    outcome_rewards=rewards, response_mask=torch.ones(8, 3))
    assert fallback.eq(0).all(), fallback
