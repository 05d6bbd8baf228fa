"""The placement arithmetic (raytrain.config.placement, no Ray): each role's requests, the totals, and
whether a cluster's nodes can hold them."""

from __future__ import annotations

import pytest

from raytrain.config import ConfigError, parse_config
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


def _pinned(raw: dict) -> dict:
    # Each training worker and the rollout actor pinned to nodes started with `--resources`.
    return {**raw, "train": {**raw["train"], "resources": {"trainer": 1}},
            "rollout": {**raw["rollout"], "resources": {"rollout": 1}}}


def test_custom_resources_are_asked_per_worker_and_actor(base_config_dict):
    raw = _pinned(base_config_dict)
    raw["reward"] = {**raw["reward"], "resources": {"head": 0.1}}
    plan = roles(parse_config(raw), needs_rollouts=True)
    assert {r.name: dict(r.resources) for r in plan} == {
        "training workers": {"trainer": 1}, "rollout engines": {"rollout": 1}, "reward actor": {"head": 0.1}, "data decode": {}}
    # A head with the small actors, a node per training worker, one for the rollout actor (Ray's node:<ip> markers too).
    head = {"CPU": 2.0, "head": 1.0, "node:127.0.0.1": 1.0, "node:__internal_head__": 1.0, "memory": 1e9}
    nodes = [head, {"CPU": 1.0, "trainer": 1.0}, {"CPU": 1.0, "trainer": 1.0}, {"CPU": 1.0, "rollout": 1.0}]
    assert shortfalls(plan, nodes) == []
    check(plan, nodes)
    assert "custom: trainer 1" in describe(plan, nodes) and "fits: yes" in describe(plan, nodes)


def test_a_custom_resource_no_node_has_is_named_with_what_the_cluster_has(base_config_dict):
    plan = roles(parse_config(_pinned(base_config_dict)), needs_rollouts=True)
    one_node = [{"CPU": 8.0, "node:127.0.0.1": 1.0, "node:__internal_head__": 1.0, "memory": 1e9, "object_store_memory": 1e9}]
    # Named once per key, and the roles asking for it are not also said not to fit.
    assert shortfalls(plan, one_node) == [
        "no node has the custom resource 'trainer' the training workers ask for; the cluster has no custom resources",
        "no node has the custom resource 'rollout' the rollout engines ask for; the cluster has no custom resources"]
    with pytest.raises(PlacementError) as exc:
        check(plan, [{"CPU": 8.0, "rollout": 1.0, "gpu_box": 2.0}])
    message = str(exc.value)
    assert "\n" not in message
    assert "no node has the custom resource 'trainer' the training workers ask for; the cluster has custom resources gpu_box 2, rollout 1" in message
    assert "training workers 2 x (1 CPU, 0 GPU, trainer 1)" in message and "rollout engines 1 x (1 CPU, 0 GPU, rollout 1)" in message


def test_custom_resources_count_in_total_and_per_node(base_config_dict):
    plan = roles(parse_config(_pinned(base_config_dict)), needs_rollouts=True)
    # One `trainer` in the cluster for two workers asking one each: the second would wait forever.
    assert shortfalls(plan, [{"CPU": 8.0, "trainer": 1.0, "rollout": 1.0}]) == ["2 'trainer' asked, the cluster has 1"]
    # Enough `trainer` in total, but the node that has it lacks the CPU a worker asks for beside it.
    nodes = [{"CPU": 8.0, "rollout": 1.0}, {"CPU": 0.5, "trainer": 2.0}]
    assert shortfalls(plan, nodes) == ["no node has the 1 CPUs, 0 GPUs and trainer 1 one of the training workers asks for"]


@pytest.mark.parametrize("resources", [{"CPU": 1}, {"GPU": 1}, {"memory": 1e9}, {"trainer": 0}, {"trainer": -1}, {"": 1}])
def test_builtin_names_and_empty_amounts_are_refused(base_config_dict, resources):
    with pytest.raises(ConfigError, match="train.resources"):
        parse_config({**base_config_dict, "train": {**base_config_dict["train"], "resources": resources}})
