"""What a training job checks before it starts anything (no Ray, no weights loaded): the files a
validated config names and whether the cluster can hold the run.

The model folders (policy, thinking judge, CLIP encoder) are judged from their file names and
`config.json` alone: a folder that does not exist, one with only pickled weights (unpickling runs
code; refused unless `model.allow_pickle`), one that ships its own model code without
`model.trust_remote_code`, a response limit beyond the model's context. The manifest must exist,
have the manifest columns and rows in the training split. The placement is that of
`raytrain.config.placement` against the nodes `raytrain.cluster.planned_nodes` reads without
starting Ray (the cluster of RAY_ADDRESS is joined to read them). Each problem is one
`PreflightError` line naming the key and the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from raytrain.cluster import planned_nodes
from raytrain.config import Config, placement
from raytrain.config.sections import ModelConfig
from raytrain.data.manifest import read_manifest
from raytrain.train.algorithms import ALGORITHMS

PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# A hub name is `name` or `owner/name`; anything else (absolute, ./, ~, deeper) can only be a folder.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class PreflightError(ValueError):
    """A run that would fail later on something knowable now; the message names the key and the file."""


def check(cfg: Config, stages: dict[str, Config] | None = None) -> None:
    """Raise `PreflightError` (or `placement.PlacementError`) for the first problem of `cfg`'s `stages`
    (default: `cfg` alone; a pipeline's stages each have their own rewards): the model folders and the
    manifest, then the placement."""
    stages = stages or {"run": cfg}
    for stage in stages.values():
        check_files(stage)
    nodes = planned_nodes(cfg.cluster)
    for stage in stages.values():
        placement.check(placement.roles(stage, ALGORITHMS[stage.algorithm.name].needs_rollouts), nodes)


def check_files(cfg: Config) -> None:
    """The policy, judge and encoder folders the run loads, and its manifest."""
    check_model("model.path", cfg.model, ("rollout.sampling.max_new_tokens", cfg.rollout.sampling.max_new_tokens))
    if cfg.reward.enabled("thinking"):
        check_model("reward.judge.model.path", cfg.reward.judge.model,
                    ("reward.judge.max_new_tokens", cfg.reward.judge.max_new_tokens))
    paragraph = cfg.reward.paragraph
    if cfg.reward.enabled("paragraph") and paragraph.encoder and paragraph.encoder_kind == "transformers":
        check_model("reward.paragraph.encoder", ModelConfig(path=paragraph.encoder))
    check_manifest(cfg)


def is_local(path: str) -> bool:
    """Whether `path` can only name a folder on disk, not a hub model (those are checked when loaded)."""
    return Path(path).exists() or not _HUB_NAME.fullmatch(path)


def check_model(key: str, model: ModelConfig, new_tokens: tuple[str, int] | None = None) -> None:
    """The folder `model.path` names, from its files and `config.json` (no weights are read); `new_tokens`:
    the option and value of the longest response it is asked to write."""
    if not is_local(model.path):
        return
    folder = Path(model.path)
    if not folder.is_dir():
        raise PreflightError(f"{key}: model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():
            return  # a LoRA adapter: its base model is checked when it is named
        raise PreflightError(f"{key}: {folder} has no config.json (not a Hugging Face model folder)")
    pickled = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
    if not any(folder.glob("*.safetensors")):
        if not pickled:
            raise PreflightError(f"{key}: {folder} has no weights (*.safetensors)")
        if not model.allow_pickle:
            raise PreflightError(f"{key}: {folder} has only pickled weights ({', '.join(pickled)}), which run code when "
                                 "loaded: convert them to safetensors, or set model.allow_pickle: true if you trust them")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise PreflightError(f"{key}: {folder / 'config.json'} does not parse: {e}") from None
    if "auto_map" in config and not model.trust_remote_code:
        raise PreflightError(f"{key}: {folder} ships its own model code (config.json auto_map); set "
                             "model.trust_remote_code: true if you trust it")
    context = (config.get("text_config") or {}).get("max_position_embeddings") or config.get("max_position_embeddings")
    if new_tokens is not None and context and new_tokens[1] >= context:
        raise PreflightError(f"{new_tokens[0]}: {new_tokens[1]} leaves no room for the prompt in the {context} "
                             f"positions of {key} {folder}")


def check_manifest(cfg: Config) -> None:
    """`data.manifest`: a readable manifest with rows in `data.train_split`."""
    path = Path(cfg.data.manifest)
    if not path.is_file():
        raise PreflightError(f"data.manifest: {path} does not exist")
    try:
        table = read_manifest(path)
    except (ValueError, OSError, pa.ArrowException) as e:
        raise PreflightError(f"data.manifest: {e}" if str(path) in str(e) else f"data.manifest: {path}: {e}") from None
    if not pc.sum(pc.equal(table["split"], cfg.data.train_split)).as_py():
        raise PreflightError(f"data.manifest: {path} has no rows in the training split {cfg.data.train_split!r} "
                             "(data.train_split)")
