"""The strict configuration system (raytrain.config)."""

from __future__ import annotations

import builtins
import copy
import io
from pathlib import Path

import pytest
import yaml

from raytrain.config import Config, ConfigError, load_config, parse_config

CONFIG_DIR = Path(__file__).resolve().parents[3] / "jobs" / "configs"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_base_config_parses(base_config_dict):
    cfg = parse_config(base_config_dict)
    assert isinstance(cfg, Config)
    assert cfg.train.total_steps == 2
    assert cfg.rollout.sampling.group_size == 4
    assert cfg.model.dtype == "float32"


def test_unknown_top_level_key(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["trian"] = {"total_steps": 3}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert "trian" in str(exc.value)


def test_unknown_nested_key_names_dotted_path(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["train"]["totl_steps"] = 5
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert "train.totl_steps" in str(exc.value)


def test_unknown_deeply_nested_key(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["rollout"]["sampling"]["group_sise"] = 5
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert "rollout.sampling.group_sise" in str(exc.value)


def test_wrong_type_names_key(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["train"]["total_steps"] = "many"
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert "train.total_steps" in str(exc.value)


def test_every_bad_key_is_named(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["train"]["total_steps"] = "many"
    raw["data"]["num_framez"] = 3
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert "train.total_steps" in str(exc.value)
    assert "data.num_framez" in str(exc.value)


def test_missing_required_section():
    with pytest.raises(ConfigError) as exc:
        parse_config({"data": {"manifest": "m.parquet"}})
    assert "model" in str(exc.value)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_load_config_with_overrides(tmp_path, base_config_dict):
    path = _write(tmp_path, base_config_dict)
    cfg = load_config(path, ["train.total_steps=5", "rollout.sampling.temperature=0.7", "model.lora.enabled=true"])
    assert cfg.train.total_steps == 5
    assert cfg.rollout.sampling.temperature == pytest.approx(0.7)
    assert cfg.model.lora.enabled is True
    # Untouched values stay.
    assert cfg.train.num_workers == 2
    # Overrides create missing sections.
    cfg = load_config(path, ["cluster.num_cpus=4"])
    assert cfg.cluster.num_cpus == 4


def test_override_unknown_key_and_bad_form(tmp_path, base_config_dict):
    path = _write(tmp_path, base_config_dict)
    with pytest.raises(ConfigError) as exc:
        load_config(path, ["train.totl_steps=5"])
    assert "train.totl_steps" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(path, ["train.total_steps"])
    assert "train.total_steps" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(path, ["train.total_steps=many"])
    assert "train.total_steps" in str(exc.value)


def test_unreadable_config_is_config_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError):
        load_config(bad)


def test_unknown_reward_component_refused(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["reward"]["weights"] = {"format": 1.0, "accuracy": 1.0, "lenght": 0.5}
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert "lenght" in str(exc.value)
    assert "reward" in str(exc.value)


def test_thinking_reward_needs_a_judge_model(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["reward"]["weights"] = {"accuracy": 1.0, "thinking": 1.0, "hybrid": 1.0, "paragraph": 0.5}
    with pytest.raises(ConfigError, match="judge model"):
        parse_config(raw)
    raw["reward"]["judge"] = {"model": {"path": "judge-folder"}, "timeout_s": 30}
    cfg = parse_config(raw)
    assert cfg.reward.enabled("thinking") and cfg.reward.judge.model.trust_remote_code is False
    assert cfg.reward.paragraph.alpha == cfg.reward.paragraph.beta == 0.5 and cfg.reward.paragraph.max_paragraphs == 8
    raw["reward"]["weights"]["thinking"] = 0.0
    raw["reward"].pop("judge")
    assert not parse_config(raw).reward.enabled("thinking")  # a zero weight needs no judge


def test_overlong_buffer_above_max_len_refused(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["reward"]["max_len"] = 4
    raw["reward"]["overlong_buffer"] = 8
    with pytest.raises(ConfigError) as exc:
        parse_config(raw)
    assert "overlong_buffer" in str(exc.value)


def test_validate_assignment(base_config_dict):
    cfg = parse_config(base_config_dict)
    with pytest.raises(ValueError):
        cfg.train.total_steps = "many"


def test_job_configs_exist():
    assert CONFIG_FILES, f"no YAML configs under {CONFIG_DIR}"


def _forbidden(name):
    def method(self, *args, **kwargs):
        raise AssertionError(f"config parsing called Path.{name}({self})")

    return method


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_job_config_parses(path, monkeypatch):
    """Shipped configs validate; parsing reads only the YAML file (their runs/ paths need not exist)."""
    opened = []
    real_open = builtins.open
    real_io_open = io.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    def spy_io(file, *args, **kwargs):
        opened.append(str(file))
        return real_io_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy_io)
    for name in ("exists", "is_file", "is_dir", "stat", "resolve", "iterdir", "mkdir"):
        monkeypatch.setattr(Path, name, _forbidden(name))
    cfg = load_config(path)
    monkeypatch.undo()
    assert isinstance(cfg, Config)
    assert opened and all(Path(f).resolve() == path.resolve() for f in opened), opened
    # The referenced paths are kept as given, not resolved or checked.
    assert str(cfg.data.manifest) == yaml.safe_load(path.read_text())["data"]["manifest"]
    assert cfg.train.total_steps is None or cfg.train.total_steps > 0  # null: until the data runs out


@pytest.mark.parametrize("key, value, new", [
    ("train.algorithm", "sft", "algorithm.name"),
    ("reward.judge.num_frames", 2, "reward.judge.media.num_frames"),
    ("reward.paragraph.max_pixels", 3136, "reward.paragraph.media.max_pixels"),
])
def test_moved_key_names_its_new_place(base_config_dict, key, value, new):
    raw = copy.deepcopy(base_config_dict)
    section, *parents, leaf = key.split(".")
    tree = raw.setdefault(section, {})
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value
    with pytest.raises(ConfigError, match=rf"{key}: moved to {new}"):
        parse_config(raw)


def test_prpo_is_an_algorithm_not_an_estimator(base_config_dict):
    raw = copy.deepcopy(base_config_dict)
    raw["algorithm"]["advantage_estimator"] = "prpo"
    with pytest.raises(ConfigError, match="algorithm.name: prpo"):
        parse_config(raw)
    raw["algorithm"].pop("advantage_estimator")
    raw["algorithm"]["name"] = "prpo"
    with pytest.raises(ConfigError, match="needs paragraph rewards"):
        parse_config(raw)
    raw["reward"]["weights"]["paragraph"] = 1.0
    assert parse_config(raw).algorithm.name == "prpo"


def test_media_budgets_keep_their_own_defaults(base_config_dict):
    """The data, the judge and the PRPO encoder decode with one section type and their own frame counts,
    also when only part of a section is given."""
    raw = copy.deepcopy(base_config_dict)
    raw["reward"]["judge"] = {"media": {"max_pixels": 3136}}
    raw["reward"]["paragraph"] = {"media": {"min_pixels": 100}}
    cfg = parse_config(raw)
    assert (cfg.data.num_frames, cfg.reward.judge.media.num_frames, cfg.reward.paragraph.media.num_frames) == (8, 4, 8)
    assert (cfg.reward.judge.media.max_pixels, cfg.reward.paragraph.media.min_pixels) == (3136, 100)
    raw["reward"]["judge"] = {"media": {"min_frames": 9, "max_frames": 3}}
    with pytest.raises(ConfigError, match="reward.judge.media"):
        parse_config(raw)
