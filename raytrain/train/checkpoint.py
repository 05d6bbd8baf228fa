"""Checkpoints: what one holds besides DeepSpeed's model and optimizer states, and saving one.

Layout of one checkpoint directory (merged from all Ray Train workers):
    deepspeed/         DeepSpeed engine state (model, optimizer, scheduler; per-rank optimizer shards)
    model/             Hugging Face export in safetensors (the adapter alone under LoRA) + processor
    trainer_state.json step, policy version, consumed data keys, skipped media, and the size of every other
                       file of the checkpoint (all ranks'), written last by rank 0

A checkpoint is complete when every file its state lists is there with the size it was written with
(`checkpoint_problem`): one cut off while Ray copied it into storage, or truncated since, is reported by
path and never resumed from; the run resumes from the newest complete one (`latest_checkpoint`,
`resume_point`). Ray Train keeps `train.keep_checkpoints` of them.
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
STORAGE_DIR = "ray"  # under run.output_dir: Ray Train's checkpoints and run state


@dataclass
class TrainerState:
    step: int = 0
    version: int = 0  # policy version served to the rollout actors; advances once per optimizer step
    consumed: list[str] = field(default_factory=list)  # data keys already drawn (trained on or filtered out; not in flight)
    skipped: list[dict] = field(default_factory=list)  # media that could not be decoded: {key, path, reason}
    files: dict[str, int] = field(default_factory=dict)  # every other file of the checkpoint -> its size in bytes

    def save(self, directory: str | Path) -> None:
        Path(directory, STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: str | Path) -> TrainerState:
        return cls(**json.loads(Path(directory, STATE_FILE).read_text()))


def checkpoint_problem(directory: str | Path) -> str | None:
    """Why the checkpoint folder cannot be resumed from, or None: its state is missing or does not parse,
    or a file the state lists is missing or of another size than written (a copy cut off, a truncated file)."""
    return _complete_state(directory)[1]


def _complete_state(directory: str | Path) -> tuple[TrainerState | None, str | None]:
    """The checkpoint's state when it is complete, else None and `checkpoint_problem`'s reason."""
    try:
        state = TrainerState.load(directory)
    except FileNotFoundError:
        return None, f"no {STATE_FILE}"
    except (json.JSONDecodeError, TypeError) as err:
        return None, f"{STATE_FILE} does not parse ({err})"
    for rel, size in state.files.items():
        path = Path(directory, rel)
        if not path.is_file():
            return None, f"{rel} is missing"
        if path.stat().st_size != size:
            return None, f"{rel} has {path.stat().st_size} bytes, {size} were written"
    return state, None


def _position(state: TrainerState) -> tuple[int, int]:
    # A run that ran out of data checkpoints its final data position after its last step.
    return state.step, len(state.consumed)


def latest_checkpoint(storage_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run's storage directory; each incomplete one (see
    `checkpoint_problem`) is reported by path and passed over, so the run resumes from the one before."""
    states = {}
    for folder in sorted(p for p in Path(storage_dir).glob("checkpoint_*") if p.is_dir()):
        state, problem = _complete_state(folder)
        if problem:
            print(f"[run] passing over incomplete checkpoint {folder}: {problem}", flush=True)
            continue
        states[folder] = state
    return max(states, key=lambda p: _position(states[p])) if states else None


def resume_point(storage_dir: str | Path, rank: int) -> Path | None:
    """The checkpoint every rank loads: the newest complete one on the run's storage (`latest_checkpoint`), as
    rank 0 sees it. Not the one Ray Train hands over on a restart: that is its newest *registered* one, which
    may be truncated since or older than a complete one its controller had not registered yet (it registers
    at its next poll) when a node died, so that step would be trained again. The driver left the consumed
    keys of the newest one at launch out of the data; a later one's feed skips its own."""
    chosen = [str(latest_checkpoint(storage_dir) or "") if rank == 0 else None]
    dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0]) if chosen[0] else None


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
        # What makes the merged folder complete: every rank's files with their sizes, in rank 0's state.
        listed: list = [None] * dist.get_world_size()
        dist.all_gather_object(listed, {p.relative_to(directory).as_posix(): p.stat().st_size
                                        for p in directory.rglob("*") if p.is_file()})
        if rank == 0:
            state.files = {rel: size for files in listed for rel, size in files.items()}
            state.save(directory)
        # One name on every rank: Ray Train merges the ranks' files (DeepSpeed's per-rank
        # optimizer shards) into that one directory.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_{state.step:06d}{name}")


def gather_data_position(state: TrainerState, feed: PromptFeed) -> None:
    """Every rank's settled keys (drawn and not in flight: `PromptFeed.settled`) and skipped media, merged
    into the state rank 0 saves."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (feed.settled(), feed.skipped))
    consumed = set(state.consumed)
    seen_skips = {s["key"] for s in state.skipped}
    for drawn, skipped in gathered:
        consumed.update(drawn)
        state.skipped += [s for s in skipped if s["key"] not in seen_skips and not seen_skips.add(s["key"])]
    state.consumed = sorted(consumed)
