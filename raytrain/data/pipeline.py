"""Ray Data pipeline: manifest rows -> decoded, budgeted frames -> (through a model family) processed prompts.

The driver builds the row order (cheap metadata only); decoding and the
processor run in parallel Ray Data tasks (`raytrain.models.prompts`); Ray Train
workers stream their shards. A file that cannot be decoded becomes a row with
`error` set, so the consumer skips it, counts it and lists it by path: nothing
disappears silently.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raytrain.config.sections import DataConfig
from raytrain.data.batch import Prompt
from raytrain.data.manifest import read_manifest
from raytrain.data.media import MediaError, decode_media

# Rows per Ray Data block before decoding: small blocks let decode tasks run in parallel.
ROWS_PER_BLOCK = 4


PAD_MEDIA = "pad"


def split_rows(data: DataConfig, split: str, *, epochs: int = 1, seed: int = 0, exclude: frozenset[str] = frozenset(),
               multiple_of: int = 1) -> pa.Table:
    """The manifest rows of `split`, `epochs` times, each epoch in its own seeded order.

    Without training weights (or all equal) an epoch is a permutation of the rows. With the
    `weight` column of `jobs.prepare_data` (real/fake balance, source mixing) an epoch is as
    many seeded draws with replacement, each row drawn in proportion to its weight.
    Every row gets `key = "<epoch>:<id>"` (a row drawn again in the same epoch:
    `"<epoch>:<id>:<n>"`); keys in `exclude` (already consumed by a
    resumed run) are left out, so a resumed run neither repeats nor loses data.
    Ray Train splits a dataset into equal shards and drops the remainder, so the table is
    padded with `media == "pad"` rows to a multiple of `multiple_of` (the worker count);
    padding is never decoded and never counted as data.
    """
    table = read_manifest(data.manifest)
    table = table.filter(pc.equal(table["split"], split))
    if data.max_rows is not None:
        table = table.slice(0, data.max_rows)
    if table.num_rows == 0:
        raise ValueError(f"{data.manifest}: no rows in split {split!r}")
    weights = _draw_weights(table)
    parts = []
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        if weights is None:
            order = rng.permutation(table.num_rows)
        else:  # balanced/mixed training (jobs.prepare_data): draws with replacement, by weight
            order = rng.choice(table.num_rows, size=table.num_rows, p=weights)
        part = table.take(pa.array(order))
        seen: dict[str, int] = {}
        keys = []
        for i in part["id"].to_pylist():
            seen[i] = seen.get(i, 0) + 1
            keys.append(f"{epoch}:{i}" if seen[i] == 1 else f"{epoch}:{i}:{seen[i]}")
        parts.append(part.append_column("key", pa.array(keys)))
    rows = pa.concat_tables(parts)
    if exclude:
        rows = rows.filter(pc.invert(pc.is_in(rows["key"], value_set=pa.array(sorted(exclude)))))
    padding = -rows.num_rows % multiple_of
    if padding and rows.num_rows:
        pad = rows.slice(0, 1).to_pylist()[0]
        pads = [{**pad, "key": f"pad:{i}", "media": PAD_MEDIA, "path": ""} for i in range(padding)]
        rows = pa.concat_tables([rows, pa.Table.from_pylist(pads, schema=rows.schema)])
    return rows


def decode_row(row: dict, data: DataConfig) -> np.ndarray:
    """A manifest row's frames under the config's sampling policy and per-frame pixel budget."""
    return decode_media(row["path"], row["media"], data)


def _draw_weights(table: pa.Table) -> np.ndarray | None:
    """Normalised draw probabilities from the `weight` column, or None when draws are uniform."""
    if "weight" not in table.column_names:
        return None
    w = np.asarray([1.0 if v is None else v for v in table["weight"].to_pylist()], dtype=np.float64)
    if w.size == 0 or np.allclose(w, w[0]):
        return None
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("manifest weights must be >= 0 with a positive sum")
    return w / w.sum()


def prompt_mode(row: dict, data: DataConfig) -> str | None:
    """The row's own `mode`, else `data.mode`; `random` is think or no_think by a hash of the row's key,
    so a resumed run asks the same prompt in the same mode."""
    mode = row.get("mode") or data.mode
    if mode == "random":
        mode = ("think", "no_think")[hashlib.sha1(str(row["key"]).encode()).digest()[0] % 2]
    return mode


def ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """A numpy column of arrays of different shapes (Ray Data carries it as objects)."""
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def row_blocks(rows: pa.Table) -> ray.data.Dataset:
    """Rows as a Ray Data dataset of small blocks, so that decode tasks run in parallel."""
    return ray.data.from_arrow([rows.slice(i, ROWS_PER_BLOCK) for i in range(0, rows.num_rows, ROWS_PER_BLOCK)])


def decode_frames(batch: dict[str, np.ndarray], data: DataConfig) -> dict[str, np.ndarray]:
    """Ray Data batch function: the decode stage alone (frames or an error per row), for benchmarks and tools."""
    frames, errors = [], []
    for row in (dict(zip(batch, values)) for values in zip(*batch.values())):
        try:
            frames.append(decode_row(row, data))
            errors.append("")
        except MediaError as e:
            frames.append(np.zeros((0, 0, 0, 3), np.uint8))
            errors.append(e.reason)
    return {"key": batch["key"], "path": batch["path"], "frames": ragged(frames), "error": np.asarray(errors)}


def build_frame_dataset(data: DataConfig, rows: pa.Table) -> ray.data.Dataset:
    """The decode stage alone, over the same blocks, decode concurrency and `decode_row` as the prompt
    pipeline (`raytrain.models.prompts.build_dataset`)."""
    return row_blocks(rows).map_batches(decode_frames, fn_kwargs={"data": data}, batch_size=ROWS_PER_BLOCK,
                                     compute=ray.data.TaskPoolStrategy(size=data.decode_concurrency), num_cpus=0.5)


def prompts_from_batch(batch: dict[str, np.ndarray]) -> tuple[list[Prompt], list[dict]]:
    """Split a numpy batch into usable prompts and skipped rows ({key, path, reason})."""
    prompts, skipped = [], []
    for i in range(len(batch["key"])):
        if batch["media"][i] == PAD_MEDIA:
            continue
        if batch["error"][i]:
            skipped.append({"key": str(batch["key"][i]), "path": str(batch["path"][i]), "reason": str(batch["error"][i])})
            continue
        prompts.append(Prompt(
            key=str(batch["key"][i]),
            id=str(batch["id"][i]),
            path=str(batch["path"][i]),
            label=str(batch["label"][i]),
            category=str(batch["category"][i]),
            input_ids=np.asarray(batch["input_ids"][i], dtype=np.int64),
            pixel_values=np.asarray(batch["pixel_values"][i], dtype=np.float32),
            grid_thw=np.asarray(batch["grid_thw"][i], dtype=np.int64),
            is_video=str(batch["media"][i]) == "video",
            second_per_grid_t=float(batch["second_per_grid_t"][i]),
            mode=str(batch["mode"][i]) or "think",
            explanation=str(batch["explanation"][i]),
        ))
    return prompts, skipped
