"""What the trackers wrote, read back: TensorBoard's event files (its `EventAccumulator`) and the history of a
W&B offline run file (`run-<id>.wandb`) without W&B's server: that file is a LevelDB-style log (7-byte
header, 32 KiB blocks of checksummed chunks) of `wandb_internal_pb2.Record`s."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from raytrain.observe.trackers import TENSORBOARD_DIR

BLOCK = 32 * 1024
HEADER = 7  # ":W&B", a 2-byte magic and a version byte
CHUNK = 7  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(data: bytes):
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = HEADER, b""
    while pos + CHUNK <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK])
        payload = data[pos + CHUNK:pos + CHUNK + length]
        pos += CHUNK + length
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        if kind in (FULL, FIRST):
            pending = payload
        else:
            pending += payload
        if kind in (FULL, LAST):
            yield pending


def history(run_file: Path) -> list[dict]:
    """Each logged row of the run as {key: value}, in order."""
    rows = []
    for raw in _records(Path(run_file).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def run_files(out_dir: Path) -> list[Path]:
    """The offline runs' files under `out_dir/wandb/` (one per tracker start; a resumed run adds one with the same id)."""
    return sorted(Path(out_dir).glob("wandb/offline-run-*/run-*.wandb"))


def tensorboard_scalars(out_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, over every event file of `out_dir/tensorboard/` (a resume adds one)."""
    events = EventAccumulator(str(Path(out_dir) / TENSORBOARD_DIR))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
