"""Ray Data pipeline: manifest rows -> decoded, budgeted frames -> processed prompts.

The driver builds the row order (cheap metadata only); decoding and the
processor run in parallel Ray Data actors; Ray Train workers stream their
shards. A file that cannot be decoded becomes a row with `error` set, so the
consumer skips it, counts it and lists it by path: nothing disappears silently.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raytrain.config import Config, DataConfig, ModelConfig
from raytrain.data.manifest import read_manifest
from raytrain.data.media import MediaError, decode_media
from raytrain.models.batching import Prompt

# Rows per Ray Data block before decoding: small blocks let decode tasks run in parallel.
_ROWS_PER_BLOCK = 4


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


class PromptBuilder:
    """Ray Data callable class: decode frames and run the model's processor, once per row."""

    def __init__(self, model: ModelConfig, data: DataConfig):
        from raytrain.models.loading import load_processor

        self.processor = load_processor(model)
        self.data = data
        # The per-frame pixel budget, in the processor's own terms.
        self._size = {"longest_edge": data.max_pixels, "shortest_edge": data.min_pixels}

    def _prompt_text(self, media: str, mode: str | None) -> str:
        text = self.data.prompt.format(media=media)
        if mode:
            text = f"{text} /{mode}"
        content = [{"type": media}, {"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

    def _process(self, row: dict, mode: str | None) -> dict:
        frames = decode_row(row, self.data)
        is_video = row["media"] == "video"
        text = self._prompt_text(row["media"], mode)
        if is_video:
            out = self.processor(
                text=[text], videos=[frames], return_tensors="np",
                videos_kwargs={"do_sample_frames": False, "size": self._size, "cap_pixels_per_frame": True},
            )
            pixel_values, grid = out["pixel_values_videos"], out["video_grid_thw"][0]
        else:
            out = self.processor(
                text=[text], images=[frames[0]], return_tensors="np",
                images_kwargs={"size": self._size},
            )
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"][0]
        second_per_grid_t = 1.0
        fps, total = row.get("fps"), row.get("num_frames")
        if is_video and fps and total and np.isfinite(fps) and fps > 0 and total > 0:  # unknown fps arrives as NaN
            # Real time between temporal patches, so M-RoPE spaces frames as the clip does.
            duration = total / fps
            second_per_grid_t = self.processor.video_processor.temporal_patch_size * duration / len(frames)
        return {
            "input_ids": out["input_ids"][0].astype(np.int64),
            "pixel_values": pixel_values.astype(np.float32),
            "grid_thw": np.asarray(grid, dtype=np.int64),
            "second_per_grid_t": float(second_per_grid_t),
            "error": "",
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        meta_cols = ["key", "id", "path", "media", "label", "category"]
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        # Strings, never None: Ray Data batches of mixed None and str do not convert to numpy.
        modes = [prompt_mode(row, self.data) or "" for row in rows]
        explanations = [row.get("explanation") or "" for row in rows]
        processed = []
        for row, mode in zip(rows, modes):
            if row["media"] == PAD_MEDIA:
                processed.append(_error_row(PAD_MEDIA))
                continue
            try:
                processed.append(self._process(row, mode or None))
            except MediaError as e:
                processed.append(_error_row(e.reason))
            except Exception as e:  # the processor on a pathological frame: still one counted skip, not a crash
                processed.append(_error_row(f"cannot process: {type(e).__name__}: {e}"))
        out = {c: np.asarray([r[c] for r in rows]) for c in meta_cols}
        for col in ("input_ids", "pixel_values", "grid_thw"):
            out[col] = _ragged([p[col] for p in processed])
        out["second_per_grid_t"] = np.asarray([p["second_per_grid_t"] for p in processed], dtype=np.float64)
        out["error"] = np.asarray([p["error"] for p in processed])
        out["mode"], out["explanation"] = np.asarray(modes, dtype=object), np.asarray(explanations, dtype=object)
        return out


def prompt_mode(row: dict, data: DataConfig) -> str | None:
    """The row's own `mode`, else `data.mode`; `random` is think or no_think by a hash of the row's key,
    so a resumed run asks the same prompt in the same mode."""
    mode = row.get("mode") or data.mode
    if mode == "random":
        mode = ("think", "no_think")[hashlib.sha1(str(row["key"]).encode()).digest()[0] % 2]
    return mode


def _error_row(reason: str) -> dict:
    return {
        "input_ids": np.zeros(0, np.int64),
        "pixel_values": np.zeros((0, 0), np.float32),
        "grid_thw": np.zeros(3, np.int64),
        "second_per_grid_t": 1.0,
        "error": reason,
    }


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    out[:] = arrays
    return out


def _blocks(rows: pa.Table) -> ray.data.Dataset:
    return ray.data.from_arrow([rows.slice(i, _ROWS_PER_BLOCK) for i in range(0, rows.num_rows, _ROWS_PER_BLOCK)])


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
    return {"key": batch["key"], "path": batch["path"], "frames": _ragged(frames), "error": np.asarray(errors)}


def build_frame_dataset(data: DataConfig, rows: pa.Table) -> ray.data.Dataset:
    """`build_dataset` without the processor: the same blocks, decode concurrency and `decode_row`."""
    return _blocks(rows).map_batches(decode_frames, fn_kwargs={"data": data}, batch_size=_ROWS_PER_BLOCK,
                                     compute=ray.data.TaskPoolStrategy(size=data.decode_concurrency), num_cpus=0.5)


def build_dataset(cfg: Config, rows: pa.Table) -> ray.data.Dataset:
    """A lazy, streaming dataset of processed prompts (decoding starts when someone iterates)."""
    return _blocks(rows).map_batches(
        PromptBuilder,
        fn_constructor_kwargs={"model": cfg.model, "data": cfg.data},
        batch_size=_ROWS_PER_BLOCK,
        compute=ray.data.ActorPoolStrategy(size=cfg.data.decode_concurrency),
        num_cpus=0.5,
    )


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
