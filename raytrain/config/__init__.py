"""The one configuration system: typed, documented, strict.

Every option is declared once, with its default and, where it comes from a paper,
the citation: the sections in `raytrain.config.sections`, the whole run (`Config`,
with the checks that span sections) here. YAML files under `jobs/configs/` fill
these models; an unknown key, a wrong type or a key that has moved fails at start
with the key's dotted path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from raytrain.config.deepspeed import deepspeed_config
from raytrain.config.deepspeed import user_config as user_deepspeed_config
from raytrain.config.sections import (
    AlgorithmConfig,
    BusterXConfig,
    ClusterConfig,
    DataConfig,
    DXLLaVAConfig,
    EvaluationConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    SFTConfig,
    Strict,
    TrainConfig,
)


class Config(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    busterx: BusterXConfig = Field(default_factory=BusterXConfig)
    dx_llava: DXLLaVAConfig = Field(default_factory=DXLLaVAConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    def with_model(self, path: str | Path) -> Config:
        """This config with `model.path` set to `path` (another checkpoint of the policy, say)."""
        return self.model_copy(update={"model": self.model.model_copy(update={"path": str(path)})})

    def with_absolute_paths(self) -> Config:
        """Workers run elsewhere (another cwd, another node under `ray job submit`): every path pinned now.

        A hub name such as `Qwen/Qwen2.5-VL-7B-Instruct` is left alone; an existing local folder is resolved.
        """
        model_path = Path(self.model.path)
        model = self.model.model_copy(update={"path": str(model_path.resolve())}) if model_path.exists() else self.model
        python = self.rollout.python  # made absolute, not resolved: a venv's python links to its base interpreter
        rollout = self.rollout.model_copy(update={"python": str(Path(python).absolute())}) if python and Path(python).exists() else self.rollout
        # The user's DeepSpeed file is read here, on the driver: workers on other nodes get its content.
        return self.model_copy(update={
            "train": self.train.model_copy(update={"deepspeed_config": user_deepspeed_config(self) or None}),
            "run": self.run.model_copy(update={"output_dir": self.run.output_dir.resolve()}),
            "data": self.data.model_copy(update={"manifest": self.data.manifest.resolve()}),
            "model": model,
            "rollout": rollout,
        })

    @model_validator(mode="after")
    def _prpo_needs_paragraphs(self):
        if self.algorithm.name == "prpo" and not self.reward.enabled("paragraph"):
            raise ValueError("algorithm.name prpo needs paragraph rewards: set reward.weights.paragraph")
        if self.algorithm.name == "prpo" and self.algorithm.prpo_group_by == "response" and self.algorithm.dynamic_sampling:
            raise ValueError("algorithm.prpo_group_by response normalises within each response, so there are no "
                             "prompt groups to filter: set algorithm.dynamic_sampling false")
        if (self.algorithm.name == "prpo" and self.algorithm.prpo_group_by == "response"
                and self.algorithm.prpo_outcome_weight > 0 and self.rollout.sampling.group_size < 2):
            raise ValueError("algorithm.prpo_outcome_weight under prpo_group_by response compares a prompt's responses: "
                             "set rollout.sampling.group_size >= 2 (or the weight to 0, the label-free official run)")
        return self

    @model_validator(mode="after")
    def _rl_needs(self):
        if self.algorithm.name == "sft":
            return self
        if not any(w != 0 for w in self.reward.weights.values()):
            raise ValueError(f"reward.weights: every weight is 0, so {self.algorithm.name} has no reward to learn from")
        per_response = self.algorithm.name == "prpo" and self.algorithm.prpo_group_by == "response"
        if self.rollout.sampling.group_size < 2 and not per_response:
            raise ValueError(f"rollout.sampling.group_size {self.rollout.sampling.group_size}: {self.algorithm.name}'s "
                             "advantages compare a prompt's responses, so a group needs at least 2")
        s, v = self.rollout.sampling, self.rollout.vllm
        if self.rollout.engine == "vllm" and s.max_new_tokens >= v.max_model_len:
            raise ValueError(f"rollout.sampling.max_new_tokens {s.max_new_tokens} leaves no room for the prompt in "
                             f"rollout.vllm.max_model_len {v.max_model_len}")
        return self

    @model_validator(mode="after")
    def _deepspeed(self):
        if self.model.quantization != "none" and self.train.zero_stage == 3:
            raise ValueError(f"model.quantization {self.model.quantization} needs train.zero_stage 0 or 2 "
                             "(ZeRO-3 cannot shard bitsandbytes' quantized weights)")
        if self.train.deepspeed_config is not None:
            try:
                deepspeed_config(self)
            except ValueError as e:
                raise ValueError(f"train.deepspeed_config: {e}") from None
        return self

    @model_validator(mode="after")
    def _colocation(self):
        if self.rollout.vllm.mode != "colocated":
            return self
        r = self.rollout
        if r.engine != "vllm" or not self.train.use_gpu or not 0 < r.num_gpus < 1 or r.num_actors != self.train.num_workers:
            raise ValueError("rollout.vllm.mode colocated needs rollout.engine vllm, train.use_gpu, 0 < rollout.num_gpus < 1 "
                             "(the engine's share of a worker's GPU) and one rollout actor per training worker")
        return self


    @model_validator(mode="after")
    def _colocated_rollouts(self):
        if not self.rollout.colocate:
            return self
        if self.rollout.engine != "transformers":
            raise ValueError("rollout.colocate generates with the training worker's own transformers module: "
                             "set rollout.engine transformers (vLLM colocates with rollout.vllm.mode colocated)")
        if self.train.zero_stage == 3:
            raise ValueError("rollout.colocate needs train.zero_stage 0 or 2: under ZeRO-3 a worker holds only shards of the "
                             "weights, and gathering them for every generated token is not supported")
        if self.model.quantization != "none" and not self.train.use_gpu:
            raise ValueError(f"rollout.colocate with model.quantization {self.model.quantization} needs train.use_gpu: "
                             "bitsandbytes' CPU backend repacks a 4-bit layer for inference at its first generation "
                             "and cannot train it after that (8-bit is not tested there)")
        return self

    @model_validator(mode="after")
    def _async_rollouts(self):
        if self.rollout.mode != "async":
            return self
        if self.rollout.colocate:
            raise ValueError("rollout.mode async overlaps rollout actors with the trainers; rollout.colocate generates with "
                             "the trainer's own module, between its steps (set rollout.mode sync)")
        if self.rollout.engine == "vllm":
            if self.rollout.vllm.mode == "colocated":
                raise ValueError("rollout.mode async generates while the trainers train; rollout.vllm.mode colocated puts the "
                                 "engine to sleep while they do (set rollout.vllm.mode separate)")
            if self.rollout.weight_transport == "broadcast":
                raise ValueError("rollout.mode async with the vLLM engine stages each sync in the engine's process, from "
                                 "the object store; a broadcast would go into vLLM's workers while they generate (set "
                                 "rollout.weight_transport object_store or auto)")
        return self

    @model_validator(mode="after")
    def _broadcast_transport(self):
        r = self.rollout
        if r.weight_transport != "broadcast":
            return self
        if self.model.lora.enabled:
            raise ValueError("rollout.weight_transport broadcast carries full weights; LoRA adapters travel through the "
                             "object store (use auto or object_store)")
        # NCCL refuses two ranks on one GPU, and a CPU engine cannot receive from GPU rank 0.
        if self.train.use_gpu and (r.vllm.mode == "colocated" or r.num_gpus < 1):
            raise ValueError("rollout.weight_transport broadcast on GPUs needs engines on GPUs of their own "
                             "(rollout.vllm.mode separate, rollout.num_gpus >= 1)")
        return self

    def weight_transport(self) -> Literal["object_store", "broadcast"]:
        """`rollout.weight_transport` with `auto` resolved."""
        r = self.rollout
        if r.weight_transport != "auto":
            return r.weight_transport
        separate_gpus = self.train.use_gpu and r.num_gpus >= 1 and r.vllm.mode == "separate"
        staged_vllm = r.mode == "async" and r.engine == "vllm"  # stages what the object store brings
        return "broadcast" if separate_gpus and not self.model.lora.enabled and not staged_vllm else "object_store"


class ConfigError(ValueError):
    """A config file that does not validate; the message names every bad key."""


def set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(parents[:depth + 1])} is not a section")
    tree[leaf] = value


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config; `overrides` are `dotted.key=yaml_value` strings (CLI `--set`)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, not {type(raw).__name__}")
    return parse_config(apply_overrides(raw, overrides), source=str(path))


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set each `dotted.key=yaml_value` override in the plain config dict `raw` (in place) and return it."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        set_dotted(raw, key.strip(), yaml.safe_load(value))
    return raw


# Keys that have moved: a config still using one fails with where it went.
MOVED_KEYS = {
    "train.algorithm": "algorithm.name (dapo, prpo or sft)",
    "reward.judge.num_frames": "reward.judge.media.num_frames",
    "reward.judge.max_pixels": "reward.judge.media.max_pixels",
    "reward.judge.min_pixels": "reward.judge.media.min_pixels",
    "reward.paragraph.num_frames": "reward.paragraph.media.num_frames",
    "reward.paragraph.max_pixels": "reward.paragraph.media.max_pixels",
    "reward.paragraph.min_pixels": "reward.paragraph.media.min_pixels",
}


def _moved_keys(raw: dict) -> list[str]:
    found = []
    for old, new in MOVED_KEYS.items():
        tree = raw
        for key in old.split("."):
            tree = tree.get(key) if isinstance(tree, dict) else None
        if tree is not None:
            found.append(f"{old}: moved to {new}")
    if isinstance(raw.get("algorithm"), dict) and raw["algorithm"].get("advantage_estimator") == "prpo":
        found.append("algorithm.advantage_estimator: prpo is now its own algorithm: set algorithm.name: prpo")
    return found


def parse_config(raw: dict, source: str = "<config>") -> Config:
    moved = _moved_keys(raw)
    if moved:
        raise ConfigError(f"{source}: invalid config: " + "; ".join(moved))
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        # A check across sections has no location; its message names its keys.
        msgs = [err["msg"].removeprefix("Value error, ") for err in e.errors()]
        lines = [f"{'.'.join(map(str, err['loc']))}: {msg}" if err["loc"] else msg for err, msg in zip(e.errors(), msgs)]
        raise ConfigError(f"{source}: invalid config: " + "; ".join(lines)) from None
