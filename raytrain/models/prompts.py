"""The Ray Data stage that turns decoded rows into a model family's prompts, and the streaming dataset of them."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow as pa
import ray

from raytrain.config import Config
from raytrain.config.sections import DataConfig, ModelConfig
from raytrain.data.media import MediaError
from raytrain.data.pipeline import PAD_MEDIA, ROWS_PER_BLOCK, decode_row, prompt_mode, ragged, row_blocks


def _error_row(reason: str) -> dict:
    return {
        "input_ids": np.zeros(0, np.int64),
        "pixel_values": np.zeros((0, 0), np.float32),
        "grid_thw": np.zeros(3, np.int64),
        "second_per_grid_t": 1.0,
        "error": reason,
    }


def _duration_s(row: dict) -> float | None:
    fps, total = row.get("fps"), row.get("num_frames")
    if fps and total and np.isfinite(fps) and fps > 0 and total > 0:  # unknown fps arrives as NaN
        return total / fps
    return None


class PromptBuilder:
    """Ray Data callable class: decode frames and run the model family's processor, once per row."""

    def __init__(self, model: ModelConfig, data: DataConfig):
        # Here, not at the top: Ray Train's controller and Ray Data's split coordinator unpickle this class with
        # the dataset and never build a prompt; the model-loading stack would cost each of them seconds.
        from raytrain.models.loading import load_family

        self.family = load_family(model)
        self.data = data

    def prompt_text(self, media: str, mode: str | None) -> str:
        """The chat-template text of a row's prompt: `data.prompt` about its media, with the mode flag."""
        text = self.data.prompt.format(media=media)
        return self.family.chat_text(f"{text} /{mode}" if mode else text, media)

    def _process(self, row: dict, mode: str | None) -> dict:
        frames = decode_row(row, self.data)
        is_video = row["media"] == "video"
        encoded = self.family.encode_prompt(self.prompt_text(row["media"], mode), frames, is_video, self.data,
                                            _duration_s(row) if is_video else None)
        return {**encoded, "error": ""}

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
            out[col] = ragged([p[col] for p in processed])
        out["second_per_grid_t"] = np.asarray([p["second_per_grid_t"] for p in processed], dtype=np.float64)
        out["error"] = np.asarray([p["error"] for p in processed])
        out["mode"], out["explanation"] = np.asarray(modes, dtype=object), np.asarray(explanations, dtype=object)
        return out


@lru_cache(maxsize=4)
def _builder(model_json: str, data_json: str) -> PromptBuilder:
    return PromptBuilder(ModelConfig.model_validate_json(model_json), DataConfig.model_validate_json(data_json))


def build_prompts(batch: dict[str, np.ndarray], model_json: str, data_json: str) -> dict[str, np.ndarray]:
    """Ray Data task function: `PromptBuilder` on one batch, the builder (its processor) kept per process.

    Tasks rather than an actor pool: Ray reuses a job's task worker processes, so every launch after the
    first in a job finds the processor imported and loaded; an actor pool starts fresh processes on each
    launch, ~10 s on the critical path on 2 cores before the first batch."""
    return _builder(model_json, data_json)(batch)


def build_dataset(cfg: Config, rows: pa.Table) -> ray.data.Dataset:
    """A lazy, streaming dataset of processed prompts (decoding starts when someone iterates)."""
    return row_blocks(rows).map_batches(
        build_prompts,
        fn_kwargs={"model_json": cfg.model.model_dump_json(), "data_json": cfg.data.model_dump_json()},
        batch_size=ROWS_PER_BLOCK,
        compute=ray.data.TaskPoolStrategy(size=cfg.data.decode_concurrency),
        num_cpus=0.5,
    )
