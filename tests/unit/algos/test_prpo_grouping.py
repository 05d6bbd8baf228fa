"""PRPO's two groupings (`algorithm.prpo_group_by`) against hand-computed values, and their config checks."""

from types import SimpleNamespace

import pytest
import torch

from raytrain.algos.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, response_paragraph_advantages
from raytrain.config import parse_config
from tests.unit.algos.test_prpo import _masks

# Response 0: paragraphs r = 1 (tokens 0, 1) and 0 (token 2); response 1: r = 1, 0, 0.5 on tokens 0, 1, 2.
REWARDS = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.5]])
MASKS = _masks([[0, 1], [2]], [[0], [1], [2]])


def _estimate(group_by: str, weight: float = 0.0, rewards=(0.0, 0.0), masks=MASKS, paragraph_rewards=REWARDS):
    x = AdvantageInputs(torch.tensor(rewards), 2, torch.ones(2, 3), paragraph_rewards, masks)
    return ADVANTAGE_ESTIMATORS["prpo"](x, SimpleNamespace(prpo_outcome_weight=weight, prpo_group_by=group_by))


def test_response_grouping_normalises_each_response_alone():
    # Response 0: [1, 0], mean 0.5, population std 0.5 -> +1, -1. Response 1: [1, 0, 0.5], mean 0.5,
    # population std sqrt(1/6) = 0.408248 -> +1.224745, -1.224745, 0.
    adv = _estimate("response")
    assert adv[0].tolist() == pytest.approx([1.0, 1.0, -1.0], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([1.224745, -1.224745, 0.0], abs=1e-6)


def test_prompt_grouping_pools_both_responses():
    # Pool [1, 0, 1, 0, 0.5]: mean 0.5, population std sqrt(0.2) = 0.447214 -> +-1.118034, 0.
    adv = _estimate("prompt")
    assert adv[0].tolist() == pytest.approx([1.118034, 1.118034, -1.118034], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([1.118034, -1.118034, 0.0], abs=1e-6)


def test_response_grouping_mixes_the_outcome_advantage():
    # w = 0.5, R = [1, 0]: outcome advantages among the prompt's two responses +1, -1 (population std 0.5).
    # Response 0: 0.5 * [1, 1, -1] + 0.5 * 1 = [1, 1, 0]; response 1: 0.5 * [1.224745, -1.224745, 0] - 0.5.
    adv = _estimate("response", 0.5, rewards=(1.0, 0.0))
    assert adv[0].tolist() == pytest.approx([1.0, 1.0, 0.0], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([0.112372, -1.112372, -0.5], abs=1e-6)


def test_response_grouping_one_paragraph_and_fallback():
    # A lone paragraph has nothing to be compared with: 0. A response without paragraphs falls back to its
    # outcome advantage among the prompt's responses: R = [0, 1] -> -1, +1 on every response token.
    masks = _masks([[0, 1, 2]], [[]])
    adv = _estimate("response", rewards=(0.0, 1.0), masks=masks, paragraph_rewards=torch.tensor([[0.7], [0.0]]))
    assert adv.tolist() == [[0.0, 0.0, 0.0], pytest.approx([1.0, 1.0, 1.0])]


def test_rollout_n_1_is_label_free():
    # The official setting: one response per prompt, weight 0; the outcome rewards play no part.
    masks = _masks([[0], [1, 2]])
    one = response_paragraph_advantages(torch.tensor([[0.2, 0.8]]), masks, 1, outcome_rewards=torch.tensor([5.0]))
    assert one.tolist() == [pytest.approx([-1.0, 1.0, 1.0])]


def test_group_by_config_checks(base_config_dict):
    raw = {**base_config_dict, "reward": {**base_config_dict["reward"], "weights": {"accuracy": 1.0, "paragraph": 1.0}}}
    prpo = {"name": "prpo", "prpo_group_by": "response"}
    with pytest.raises(ValueError, match="dynamic_sampling false"):
        parse_config({**raw, "algorithm": prpo})
    cfg = parse_config({**raw, "algorithm": {**prpo, "dynamic_sampling": False},
                        "rollout": {"sampling": {"group_size": 1}}})
    assert cfg.algorithm.prpo_group_by == "response"
    with pytest.raises(ValueError, match="group_size >= 2"):
        parse_config({**raw, "algorithm": {**prpo, "dynamic_sampling": False, "prpo_outcome_weight": 0.5},
                      "rollout": {"sampling": {"group_size": 1}}})
    assert parse_config(raw).algorithm.prpo_group_by == "prompt"
