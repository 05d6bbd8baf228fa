"""Ray Data pipeline: manifest rows -> decoded, budgeted frames -> processed prompts.

The driver builds the row order (cheap metadata only); decoding and the
processor run in parallel Ray Data actors; Ray Train workers stream their
shards. A file that cannot be decoded becomes a row with `error` set, so the
consumer skips it, counts it and lists it by path: nothing disappears silently.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from raytrain.config import Config, DataConfig, ModelConfig
from raytrain.manifest import read_manifest
from raytrain.media import MediaError, load_frames
from raytrain.policy import Prompt

# Rows per Ray Data block before decoding: small blocks let decode tasks run in parallel.
_ROWS_PER_BLOCK = 4


PAD_MEDIA = "pad"


def split_rows(data: DataConfig, split: str, *, epochs: int = 1, seed: int = 0, exclude: frozenset[str] = frozenset(),
               multiple_of: int = 1) -> pa.Table:
    """The manifest rows of `split`, `epochs` times, each epoch in its own seeded order.

    Every row gets `key = "<epoch>:<id>"`; keys in `exclude` (already consumed by a
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
    parts = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(table.num_rows)
        part = table.take(pa.array(order))
        keys = pa.array([f"{epoch}:{i}" for i in part["id"].to_pylist()])
        parts.append(part.append_column("key", keys))
    rows = pa.concat_tables(parts)
    if exclude:
        rows = rows.filter(pc.invert(pc.is_in(rows["key"], value_set=pa.array(sorted(exclude)))))
    padding = -rows.num_rows % multiple_of
    if padding and rows.num_rows:
        pad = rows.slice(0, 1).to_pylist()[0]
        pads = [{**pad, "key": f"pad:{i}", "media": PAD_MEDIA, "path": ""} for i in range(padding)]
        rows = pa.concat_tables([rows, pa.Table.from_pylist(pads, schema=rows.schema)])
    return rows


class PromptBuilder:
    """Ray Data callable class: decode frames and run the model's processor, once per row."""

    def __init__(self, model: ModelConfig, data: DataConfig):
        from raytrain.models import load_processor

        self.processor = load_processor(model)
        self.data = data
        # The per-frame pixel budget, in the processor's own terms.
        self._size = {"longest_edge": data.max_pixels, "shortest_edge": data.min_pixels}

    def _prompt_text(self, media: str) -> str:
        text = self.data.prompt.format(media=media)
        if self.data.mode:
            text = f"{text} /{self.data.mode}"
        content = [{"type": media}, {"type": "text", "text": text}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

    def _process(self, row: dict) -> dict:
        frames = load_frames(
            row["path"], row["media"], self.data.num_frames, max_pixels=self.data.max_pixels, min_pixels=self.data.min_pixels
        )
        is_video = row["media"] == "video"
        text = self._prompt_text(row["media"])
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
            second_per_grid_t = self.processor.video_processor.temporal_patch_size * duration / self.data.num_frames
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
        processed = []
        for row in rows:
            if row["media"] == PAD_MEDIA:
                processed.append(_error_row(PAD_MEDIA))
                continue
            try:
                processed.append(self._process(row))
            except MediaError as e:
                processed.append(_error_row(e.reason))
            except Exception as e:  # the processor on a pathological frame: still one counted skip, not a crash
                processed.append(_error_row(f"cannot process: {type(e).__name__}: {e}"))
        out = {c: np.asarray([r[c] for r in rows]) for c in meta_cols}
        for col in ("input_ids", "pixel_values", "grid_thw"):
            out[col] = _ragged([p[col] for p in processed])
        out["second_per_grid_t"] = np.asarray([p["second_per_grid_t"] for p in processed], dtype=np.float64)
        out["error"] = np.asarray([p["error"] for p in processed])
        return out


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


def build_dataset(cfg: Config, rows: pa.Table) -> ray.data.Dataset:
    """A lazy, streaming dataset of processed prompts (decoding starts when someone iterates)."""
    blocks = [rows.slice(i, _ROWS_PER_BLOCK) for i in range(0, rows.num_rows, _ROWS_PER_BLOCK)]
    return ray.data.from_arrow(blocks).map_batches(
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
        ))
    return prompts, skipped
