"""`train.deepspeed_config` (raytrain.config.deepspeed): a user's DeepSpeed file merged over the generated
config, the keys the trainer owns refused, bad files named with their line; the options beside it
(offload, gradient accumulation, quantization) and their refusals."""

from __future__ import annotations

import json

import pytest
import yaml

from jobs import sft
from raytrain.config import ConfigError, load_config, parse_config
from raytrain.config.deepspeed import deepspeed_config, generated_config
from raytrain.config.sections import TrainConfig
from raytrain.train.step import micro_batch_rows
from tests.unit.config.test_config import CONFIG_DIR


def _cfg(raw: dict, **train):
    return parse_config({**raw, "train": {**raw["train"], **train}})


def _ds_file(tmp_path, content: dict | str, name="ds_config.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def test_user_keys_win_and_auto_keeps_the_trainers(base_config_dict, tmp_path):
    user = {"gradient_clipping": 0.5, "train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": "auto"},
            "zero_optimization": {"stage": 2, "reduce_bucket_size": 12345, "allgather_bucket_size": "auto"},
            "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10, "warmup_max_lr": "auto"}}}
    cfg = _cfg(base_config_dict, deepspeed_config=str(_ds_file(tmp_path, user)))
    merged, generated = deepspeed_config(cfg), generated_config(cfg)
    assert merged["gradient_clipping"] == 0.5 != generated["gradient_clipping"]
    assert merged["zero_optimization"] == {**generated["zero_optimization"], "reduce_bucket_size": 12345}
    assert merged["train_micro_batch_size_per_gpu"] == 1 and merged["bf16"] == {"enabled": False}
    assert merged["scheduler"] == {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}
    # Workers on other nodes get the content, not the driver's path.
    assert cfg.with_absolute_paths().train.deepspeed_config == user
    assert deepspeed_config(parse_config(cfg.with_absolute_paths().model_dump(mode="json"))) == merged


@pytest.mark.parametrize("user, option", [
    ({"train_batch_size": 16}, "train.prompts_per_worker"),
    ({"gradient_accumulation_steps": 4}, "train.gradient_accumulation_steps"),
    ({"optimizer": {"type": "AdamW", "params": {"lr": 1e-5}}}, "train.lr"),
    ({"bf16": {"enabled": True}}, "model.dtype"),
    ({"zero_optimization": {"stage": 3}}, "train.zero_stage"),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, "train.offload_optimizer"),
])
def test_owned_keys_are_refused_with_the_option_that_sets_them(base_config_dict, tmp_path, user, option):
    with pytest.raises(ConfigError) as exc:
        _cfg(base_config_dict, deepspeed_config=str(_ds_file(tmp_path, user)))
    assert "train.deepspeed_config" in str(exc.value) and f"set {option}" in str(exc.value)


def test_offload_and_its_pin_memory(base_config_dict, tmp_path):
    user = {"zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memory": True}}}
    cfg = _cfg(base_config_dict, offload_optimizer="cpu", deepspeed_config=str(_ds_file(tmp_path, user)))
    assert deepspeed_config(cfg)["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    zero3 = _cfg(base_config_dict, zero_stage=3, offload_params="cpu")
    assert generated_config(zero3)["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": False}


def test_invalid_json_names_the_file_and_line(base_config_dict, tmp_path, capsys):
    path = _ds_file(tmp_path, '{\n  "gradient_clipping": 1.0,\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(ConfigError) as exc:
        _cfg(base_config_dict, deepspeed_config=str(path))
    assert f"{path}:3: not valid JSON" in str(exc.value)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config_dict))
    with pytest.raises(SystemExit) as exit_:
        sft.main(["--config", str(config), "--deepspeed", str(path), "--dry-run"])
    assert exit_.value.code == 2 and f"{path}:3" in capsys.readouterr().err
    missing = tmp_path / "nowhere.json"
    with pytest.raises(ConfigError, match="cannot read DeepSpeed config .*nowhere.json"):
        _cfg(base_config_dict, deepspeed_config=str(missing))


def test_yaml_file_and_inline_mapping(base_config_dict, tmp_path):
    path = _ds_file(tmp_path, "zero_optimization:\n  reduce_bucket_size: 777\n", name="ds.yaml")
    from_file = deepspeed_config(_cfg(base_config_dict, deepspeed_config=str(path)))
    inline = deepspeed_config(_cfg(base_config_dict, deepspeed_config={"zero_optimization": {"reduce_bucket_size": 777}}))
    assert from_file == inline and inline["zero_optimization"]["reduce_bucket_size"] == 777
    bad = _ds_file(tmp_path, "zero_optimization:\n  stage: [2\n", name="bad.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        _cfg(base_config_dict, deepspeed_config=str(bad))


def test_shipped_ds_config_fits_the_gpu_configs():
    """jobs/configs/ds_config.json (the seed's file, HF-style `auto`s) goes with every shipped ZeRO-2 config."""
    for path in sorted(CONFIG_DIR.glob("*_qwen7b.yaml")):
        cfg = load_config(path, [f"train.deepspeed_config={CONFIG_DIR / 'ds_config.json'}"])
        assert deepspeed_config(cfg)["zero_optimization"]["reduce_bucket_size"] == 500_000_000, path.name


@pytest.mark.parametrize("train, model, message", [
    ({"micro_batch_size": 2, "gradient_accumulation_steps": 2}, {}, "not micro_batch_size and gradient_accumulation_steps"),
    ({"micro_batch_size": 2, "max_tokens_per_micro_batch": 512}, {}, "not micro_batch_size and max_tokens_per_micro_batch"),
    ({"offload_params": "cpu"}, {}, "needs zero_stage 3"),
    ({"zero_stage": 0, "offload_optimizer": "cpu"}, {}, "offload_optimizer cpu needs zero_stage 2 or 3"),
    ({}, {"quantization": "4bit"}, "set lora.enabled"),
    ({"zero_stage": 3}, {"quantization": "8bit", "lora": {"enabled": True}}, "needs train.zero_stage 0 or 2"),
])
def test_refused_combinations(base_config_dict, train, model, message):
    raw = {**base_config_dict, "model": {**base_config_dict["model"], **model}}
    with pytest.raises(ConfigError, match=message):
        _cfg(raw, **train)


@pytest.mark.parametrize("train, rows, expected", [
    ({}, 6, 6),  # one pass
    ({"micro_batch_size": 4}, 6, 4),
    ({"gradient_accumulation_steps": 2}, 6, 3),  # 2 passes of 3
    ({"gradient_accumulation_steps": 4}, 6, 2),  # ceil(6 / 4): 3 passes
    ({"gradient_accumulation_steps": 8}, 5, 1),  # never below one sequence
])
def test_micro_batch_rows(train, rows, expected):
    assert micro_batch_rows(TrainConfig(**train), rows) == expected
