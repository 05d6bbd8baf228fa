"""The DeepSpeed config of a run: the one the trainer generates from `train` and `model`, and a user's
file (`train.deepspeed_config`, the seed's `ds_config.json`) merged over it.

The user's keys win, except those the trainer computes or depends on (`OWNED`): those are refused
with the option that sets them, unless they say `auto` (Hugging Face's convention) or repeat the
trainer's value. Any other `auto` leaves DeepSpeed's or the trainer's value in place.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from raytrain.config import Config

AUTO = "auto"
# Dotted DeepSpeed keys the trainer owns -> the option that sets them instead.
OWNED = {
    "train_batch_size": "train.prompts_per_worker x train.num_workers (the trainer assembles each step's batch)",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps (or train.micro_batch_size)",
    "managed_gradient_accumulation": "train.gradient_accumulation_steps (the trainer marks each step's boundary)",
    "optimizer": "train.lr and train.weight_decay (the trainer builds AdamW, or CPU Adam under train.offload_optimizer)",
    "bf16.enabled": "model.dtype",
    "fp16.enabled": "model.dtype",
    "zero_optimization.stage": "train.zero_stage",
    "zero_optimization.offload_optimizer.device": "train.offload_optimizer",
    "zero_optimization.offload_param.device": "train.offload_params",
}


def generated_config(cfg: Config) -> dict:
    """What the trainer asks of DeepSpeed: one micro-batch per `engine.backward`, a step when it says so."""
    t = cfg.train
    zero = {"stage": t.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if t.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = t.zero3_param_persistence_threshold
    if t.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": t.use_gpu}
    if t.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": t.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "zero_allow_untested_optimizer": True,
        # A step is as many micro-batches as the data gives (`train_step`): `engine.step()` is the boundary.
        "managed_gradient_accumulation": False,
        "steps_per_print": 1 << 30,
    }


def read_user_config(path: str | Path) -> dict:
    """A DeepSpeed config file: JSON (`.json`, or any file whose text starts with `{`) or YAML. A syntax
    error names the file and the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read DeepSpeed config {path}: {e.strerror}") from None
    if path.suffix == ".json" or text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    else:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ValueError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a DeepSpeed config is a mapping, not {type(raw).__name__}")
    return raw


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in OWNED:
            yield from _leaves(value, f"{dotted}.")
        else:
            yield dotted, value


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def check_user_config(user: dict, generated: dict) -> None:
    """Refuse every key of `user` the trainer owns, naming the option that sets it."""
    refused = [f"{key} ({value!r}): set {OWNED[key]} instead" for key, value in _leaves(user)
               if key in OWNED and value != AUTO and value != _get(generated, key)]
    if refused:
        raise ValueError("the trainer sets these DeepSpeed keys itself: " + "; ".join(refused))


def merge(generated: dict, user: dict) -> dict:
    """`user` over `generated`, key by key into nested sections; `auto` keeps the generated value (or
    DeepSpeed's default where the trainer sets none)."""
    out = copy.deepcopy(generated)
    for key, value in user.items():
        if value == AUTO:
            continue
        if isinstance(value, dict):
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def user_config(cfg: Config) -> dict:
    """`train.deepspeed_config` as a mapping (read from its file when it names one); {} when unset."""
    value = cfg.train.deepspeed_config
    if value is None:
        return {}
    return value if isinstance(value, dict) else read_user_config(value)


def deepspeed_config(cfg: Config) -> dict:
    """The config `deepspeed.initialize` gets: the generated one with the user's file merged over it."""
    generated = generated_config(cfg)
    user = user_config(cfg)
    check_user_config(user, generated)
    return merge(generated, user)
