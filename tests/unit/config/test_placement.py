"""The placement arithmetic (raytrain.config.placement, no Ray): each role's requests, the totals, and
whether a cluster's nodes can hold them."""

from __future__ import annotations

import pytest

from raytrain.config import parse_config
from raytrain.config.placement import PlacementError, check, describe, roles, shortfalls, totals


def _gpu(raw: dict, **rollout) -> dict:
    return {**raw, "train": {**raw["train"], "use_gpu": True, "num_workers": 4, "cpus_per_worker": 4},
            "rollout": {**raw["rollout"], "num_actors": 4, "num_cpus": 2, "num_gpus": 1, **rollout}}


def test_roles_of_the_tiny_config(base_config_dict):
    plan = roles(parse_config(base_config_dict), needs_rollouts=True)
    assert [(r.name, r.count, r.cpus, r.gpus) for r in plan] == [
        ("training workers", 2, 1, 0), ("rollout engines", 1, 1, 0), ("reward actor", 1, 0.5, 0), ("data decode", 2, 0.5, 0)]
    assert totals(plan) == (2 + 1 + 0.5 + 1, 0)
    assert [r.name for r in roles(parse_config(base_config_dict), needs_rollouts=False)] == ["training workers", "data decode"]


def test_colocated_transformers_rollouts_start_no_engines(base_config_dict):
    base_config_dict["rollout"]["colocate"] = True
    plan = roles(parse_config(base_config_dict), needs_rollouts=True)
    assert [r.name for r in plan] == ["training workers", "reward actor", "data decode"]
    assert plan[0].note == "ZeRO-2, colocated rollouts"


def test_separate_engines_judge_and_encoder(base_config_dict):
    raw = _gpu(base_config_dict)
    raw["reward"] = {"weights": {"accuracy": 1.0, "thinking": 1.0, "paragraph": 1.0},
                     "judge": {"model": {"path": "judge"}, "num_actors": 2, "num_gpus": 1, "num_cpus": 2},
                     "paragraph": {"encoder": "ViT-B-32", "num_gpus": 0.25}}
    plan = roles(parse_config(raw), needs_rollouts=True)
    assert {r.name: (r.count, r.cpus, r.gpus) for r in plan} == {
        "training workers": (4, 4, 1), "rollout engines": (4, 2, 1), "reward actor": (1, 0.5, 0.25),
        "thinking judge": (2, 2, 1), "data decode": (2, 0.5, 0)}
    # 4 + 4 + 0.25 + 2 GPUs; 16 + 8 + 0.5 + 4 + 1 CPUs.
    assert totals(plan) == (29.5, 10.25)
    table = describe(plan, [{"CPU": 64.0, "GPU": 8.0}])
    assert "with the CLIP encoder" in table and "10.25" in table and "fits: NO: 10.25 GPUs asked, the cluster has 8" in table


def test_colocated_engines_share_the_workers_gpus(base_config_dict):
    raw = _gpu(base_config_dict, engine="vllm", num_gpus=0.4, vllm={"mode": "colocated"})
    plan = roles(parse_config(raw), needs_rollouts=True)
    assert [r.gpus for r in plan[:2]] == [pytest.approx(0.6), 0.4]
    assert totals(plan)[1] == pytest.approx(4.0)
    assert shortfalls(plan, [{"CPU": 32.0, "GPU": 4.0}]) == []


def test_every_request_must_fit_one_node(base_config_dict):
    plan = roles(parse_config(_gpu(base_config_dict)), needs_rollouts=True)
    # Enough in total (8 GPUs, 40 CPUs) but no node has 4 CPUs beside a GPU.
    nodes = [{"CPU": 3.0, "GPU": 4.0}, {"CPU": 3.0, "GPU": 4.0}, {"CPU": 34.0}]
    missing = shortfalls(plan, nodes)
    assert missing == ["no node has the 4 CPUs and 1 GPUs one of the training workers asks for"]
    with pytest.raises(PlacementError) as exc:
        check(plan, nodes)
    assert "training workers 4 x (4 CPU, 1 GPU)" in str(exc.value) and "rollout engines 4 x (2 CPU, 1 GPU)" in str(exc.value)
    check(plan, [{"CPU": 40.0, "GPU": 8.0}])  # one big node holds it
