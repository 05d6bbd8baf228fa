"""Checkpoints: what one holds besides DeepSpeed's model and optimizer states, and saving one.

Layout of one checkpoint directory (merged from all Ray Train workers):
    deepspeed/         DeepSpeed engine state (model, optimizer, scheduler; per-rank optimizer shards)
    model/             Hugging Face export in safetensors (the adapter alone under LoRA) + processor
    trainer_state.json step, policy version, consumed data keys, skipped media
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from raytrain.config import Config
from raytrain.models.loading import export_weights
from raytrain.train.experience import PromptFeed

STATE_FILE = "trainer_state.json"
DEEPSPEED_TAG = "deepspeed"
MODEL_DIR = "model"


@dataclass
class TrainerState:
    step: int = 0
    version: int = 0  # policy version served to the rollout actors; advances once per optimizer step
    consumed: list[str] = field(default_factory=list)  # data keys already drawn (trained on or filtered out)
    skipped: list[dict] = field(default_factory=list)  # media that could not be decoded: {key, path, reason}

    def save(self, directory: str | Path) -> None:
        Path(directory, STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: str | Path) -> TrainerState:
        return cls(**json.loads(Path(directory, STATE_FILE).read_text()))


def latest_checkpoint(storage_dir: str | Path) -> Path | None:
    """The newest checkpoint folder of a run's storage directory (one with a readable trainer state).

    A state file that does not parse belongs to a checkpoint still being copied into storage, or cut off
    while it was: it is reported and passed over, so the run resumes from the one before."""
    states = {}
    for path in Path(storage_dir).glob(f"*/{STATE_FILE}"):
        try:
            states[path.parent] = TrainerState.load(path.parent)
        except (json.JSONDecodeError, TypeError) as err:
            print(f"[run] passing over incomplete checkpoint {path.parent}: {err}", flush=True)
    if not states:
        return None
    # A run that ran out of data checkpoints its final data position after its last step.
    return max(states, key=lambda p: (states[p].step, len(states[p].consumed)))


def save_checkpoint(engine, processor, cfg: Config, state: TrainerState, rank: int, feed: PromptFeed, metrics: dict,
                    gathered: dict[str, torch.Tensor] | None, name: str = "") -> None:
    """Every rank's data position into `state`, then DeepSpeed's state (every rank), the Hugging Face export
    (`gathered`: the ZeRO-3 gather, see `raytrain.train.policy_sync`) and the state (rank 0), reported with `metrics`."""
    gather_data_position(state, feed)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=cfg.model.lora.enabled)
        if rank == 0:
            export_weights(engine.module, processor, directory / MODEL_DIR, gathered)
            state.save(directory)
        # One name on every rank: Ray Train merges the ranks' files (DeepSpeed's per-rank
        # optimizer shards) into that one directory.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{state.step:06d}{name}")


def gather_data_position(state: TrainerState, feed: PromptFeed) -> None:
    """Every rank's drawn keys and skipped media, merged into the state rank 0 saves."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (feed.drawn, feed.skipped))
    consumed = set(state.consumed)
    seen_skips = {s["key"] for s in state.skipped}
    for drawn, skipped in gathered:
        consumed.update(drawn)
        state.skipped += [s for s in skipped if s["key"] not in seen_skips and not seen_skips.add(s["key"])]
    state.consumed = sorted(consumed)
