"""What a checkpoint holds besides DeepSpeed's model and optimizer states.

Layout of one checkpoint directory (merged from all Ray Train workers):
    deepspeed/         DeepSpeed engine state (model, optimizer, scheduler; per-rank optimizer shards)
    model/             Hugging Face export in safetensors (the adapter alone under LoRA) + processor
    trainer_state.json step, policy version, consumed data keys, skipped media
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    def load(cls, directory: str | Path) -> "TrainerState":
        return cls(**json.loads(Path(directory, STATE_FILE).read_text()))


def latest_checkpoint(storage_dir: str | Path) -> Path | None:
    """The newest checkpoint folder of a run's storage directory (one with a trainer state)."""
    states = {p.parent: TrainerState.load(p.parent) for p in Path(storage_dir).glob(f"*/{STATE_FILE}")}
    if not states:
        return None
    # A run that ran out of data checkpoints its final data position after its last step.
    return max(states, key=lambda p: (states[p].step, len(states[p].consumed)))
