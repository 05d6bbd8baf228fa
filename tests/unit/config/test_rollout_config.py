"""Rollout-engine options of the config: vLLM settings and the colocated-mode checks."""

from __future__ import annotations

import pytest

from raytrain.config import ConfigError, parse_config
from tests.conftest import config_dict


@pytest.fixture
def base_config_dict(tmp_path):
    """Paths are not opened when a config is parsed: no model or dataset needs building."""
    return config_dict(tmp_path / "model", tmp_path / "manifest.parquet", tmp_path / "run")


def _gpu_config(raw: dict, **rollout) -> dict:
    raw["train"].update(use_gpu=True, num_workers=2)
    raw["rollout"].update({"engine": "vllm", "num_actors": 2, "num_gpus": 0.5, **rollout})
    return raw


def test_vllm_options_parse(base_config_dict):
    raw = _gpu_config(base_config_dict, weight_bucket_mb=64,
                      vllm={"mode": "colocated", "tensor_parallel_size": 1, "max_model_len": 4096, "gpu_memory_utilization": 0.4})
    cfg = parse_config(raw)
    assert cfg.rollout.engine == "vllm" and cfg.rollout.weight_bucket_mb == 64
    assert cfg.rollout.vllm.mode == "colocated" and cfg.rollout.vllm.gpu_memory_utilization == 0.4
    assert parse_config(base_config_dict | {"rollout": {}}).rollout.vllm.mode == "separate"


@pytest.mark.parametrize("change", [
    {"rollout": {"engine": "transformers"}},
    {"rollout": {"num_gpus": 1}},
    {"rollout": {"num_actors": 1}},
    {"train": {"use_gpu": False}},
])
def test_colocated_needs_a_gpu_share_per_worker(base_config_dict, change):
    raw = _gpu_config(base_config_dict, vllm={"mode": "colocated"})
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ConfigError, match="colocated needs"):
        parse_config(raw)


@pytest.mark.parametrize("change, message", [
    ({"rollout": {"engine": "vllm"}}, "set rollout.engine transformers"),
    ({"train": {"zero_stage": 3}}, "needs train.zero_stage 0 or 2"),
    ({"model": {"quantization": "4bit", "lora": {"enabled": True}}}, "needs train.use_gpu"),
])
def test_colocated_transformers_rollouts_refuse_what_they_cannot_serve(base_config_dict, change, message):
    base_config_dict["rollout"]["colocate"] = True
    assert parse_config(base_config_dict).rollout.colocate
    assert not parse_config(config_dict("m", "d", "r")).rollout.colocate  # off by default
    for section, values in change.items():
        base_config_dict[section].update(values)
    with pytest.raises(ConfigError, match=message):
        parse_config(base_config_dict)


def test_unknown_engine_refused(base_config_dict):
    base_config_dict["rollout"]["engine"] = "sglang"
    with pytest.raises(ConfigError, match="rollout.engine"):
        parse_config(base_config_dict)


@pytest.mark.parametrize("use_gpu, num_gpus, mode, lora, expected", [
    (False, 0, "separate", False, "object_store"),  # CPU: the object store unless asked
    (True, 1, "separate", False, "broadcast"),  # engines on GPUs of their own: NCCL
    (True, 2, "separate", False, "broadcast"),
    (True, 0.5, "colocated", False, "object_store"),  # one GPU, two processes: no NCCL group
    (True, 1, "separate", True, "object_store"),  # adapters are small
])
def test_auto_weight_transport(base_config_dict, use_gpu, num_gpus, mode, lora, expected):
    raw = _gpu_config(base_config_dict, num_gpus=num_gpus, vllm={"mode": mode})
    raw["train"]["use_gpu"] = use_gpu
    raw["model"]["lora"] = {"enabled": lora}
    assert parse_config(raw).weight_transport() == expected


@pytest.mark.parametrize("change, message", [
    ({"model": {"lora": {"enabled": True}}}, "LoRA adapters travel through the object store"),
    ({"rollout": {"num_gpus": 0.5, "vllm": {"mode": "colocated"}}}, "GPUs of their own"),
    ({"rollout": {"num_gpus": 0}}, "GPUs of their own"),
])
def test_broadcast_refused_where_it_cannot_work(base_config_dict, change, message):
    raw = _gpu_config(base_config_dict, num_gpus=1, weight_transport="broadcast")
    assert parse_config(raw).weight_transport() == "broadcast"
    for section, values in change.items():
        raw[section].update(values)
    with pytest.raises(ConfigError, match=message):
        parse_config(raw)
    raw["train"]["use_gpu"] = False  # on CPU (gloo) only LoRA is refused
    if "model" not in change:
        raw["rollout"].pop("vllm", None)
        assert parse_config(raw).weight_transport() == "broadcast"


@pytest.mark.parametrize("change, message", [
    ({"colocate": True}, "rollout.mode async overlaps rollout actors"),
    ({"engine": "vllm", "weight_transport": "broadcast"}, "stages each sync in the engine's process"),
])
def test_async_rollouts_refuse_what_they_cannot_overlap(base_config_dict, change, message):
    base_config_dict["rollout"]["mode"] = "async"
    assert parse_config(base_config_dict).rollout.mode == "async"
    assert parse_config(config_dict("m", "d", "r")).rollout.mode == "sync"  # the default
    base_config_dict["rollout"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_config(base_config_dict)


def test_async_vllm_takes_weights_through_the_object_store(base_config_dict):
    # On GPUs `auto` broadcasts into separate engines; an async vLLM engine stages what the object store brings.
    raw = _gpu_config(base_config_dict, num_gpus=1)
    assert parse_config(raw).weight_transport() == "broadcast"
    raw["rollout"]["mode"] = "async"
    assert parse_config(raw).weight_transport() == "object_store"
    raw["rollout"].update(num_gpus=0.5, vllm={"mode": "colocated"})  # sleeps while the trainers train
    with pytest.raises(ConfigError, match="puts the engine to sleep"):
        parse_config(raw)
