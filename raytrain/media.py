"""Frame decoding for the training pipeline: uniform frame sampling, a pixel
budget per frame (SPEC section 2) and readable errors for broken files.

Videos are read with decord, images with Pillow. Every failure surfaces as a
:class:`MediaError` naming the file, so one bad clip in a dataset of 200K can
be logged and skipped instead of killing a Ray Data worker with an opaque
C++ message.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})

# FFmpeg's AVERROR_INVALIDDATA as decord prints it ("failed with 1094995529").
_AVERROR_INVALIDDATA = "1094995529"
# decord prefixes messages with "[hh:mm:ss] /build/path/file.cc:123: ".
_DECORD_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


class MediaError(Exception):
    """A media file that cannot be used, with a human-readable reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def uniform_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices at the centres of ``n`` equal segments of ``[0, total)``.

    When ``total < n`` frames repeat, so the model always sees ``n`` frames.
    """
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def fit_to_budget(
    height: int, width: int, *, max_pixels: int, min_pixels: int, factor: int = 28
) -> tuple[int, int]:
    """Target (height, width) as in Qwen2-VL's ``smart_resize``.

    Both sides become multiples of ``factor`` (patch 14 x spatial merge 2),
    the aspect ratio is kept, and the area is brought inside
    ``[min_pixels, max_pixels]`` by scaling, never by cropping.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if max_pixels < factor * factor:
        raise ValueError(f"max_pixels={max_pixels} is below one {factor}x{factor} patch")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels={min_pixels} exceeds max_pixels={max_pixels}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    if not os.path.isfile(path):
        raise MediaError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")


def _decord_reason(exc: Exception) -> str:
    """decord's message without its build-path prefix, plus what it means."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    msg = _DECORD_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    if msg.startswith("Error reading"):
        # decord logs the real cause to stderr and only raises this.
        msg = "could not open the container (not a video, or truncated with its index missing)"
    elif _AVERROR_INVALIDDATA in msg:
        msg = f"{msg} (invalid data: truncated or corrupt stream)"
    return f"cannot decode video: {msg}"


def _open_video(path: str):
    from decord import VideoReader, cpu

    _check_file(path)
    try:
        reader = VideoReader(path, ctx=cpu(0), num_threads=1)
    except Exception as exc:  # decord raises DECORDError or RuntimeError
        raise MediaError(path, _decord_reason(exc)) from exc
    if len(reader) == 0:
        raise MediaError(path, "video has no frames")
    return reader


def _open_image(path: str) -> Image.Image:
    _check_file(path)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(path, f"cannot decode image: {exc}") from exc


def probe(path: str, media: str) -> dict:
    """fps, num_frames, width and height of a file; decodes one frame to prove it reads."""
    path = str(path)
    if media == "image":
        img = _open_image(path)
        return {"fps": None, "num_frames": 1, "width": img.width, "height": img.height}
    if media != "video":
        raise ValueError(f"media must be 'video' or 'image', got {media!r}")
    reader = _open_video(path)
    try:
        first = reader.next().shape
        fps = float(reader.get_avg_fps())
    except Exception as exc:
        raise MediaError(path, _decord_reason(exc)) from exc
    return {
        "fps": fps if math.isfinite(fps) and fps > 0 else None,
        "num_frames": len(reader),
        "width": int(first[1]),
        "height": int(first[0]),
    }


def _resize(frames: np.ndarray, max_pixels: int, min_pixels: int) -> np.ndarray:
    h, w = fit_to_budget(frames.shape[1], frames.shape[2], max_pixels=max_pixels, min_pixels=min_pixels)
    if (h, w) == frames.shape[1:3]:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


def load_frames(
    path: str, media: str, num_frames: int, *, max_pixels: int, min_pixels: int
) -> np.ndarray:
    """uint8 frames ``[T, H, W, 3]`` resized to the pixel budget.

    Videos give ``num_frames`` uniformly sampled frames (repeated when the
    clip is shorter); images give ``T = 1``.
    """
    path = str(path)
    if media == "image":
        frames = np.asarray(_open_image(path))[None]
    elif media == "video":
        reader = _open_video(path)
        try:
            frames = reader.get_batch(uniform_indices(len(reader), num_frames)).asnumpy()
        except Exception as exc:
            raise MediaError(path, _decord_reason(exc)) from exc
    else:
        raise ValueError(f"media must be 'video' or 'image', got {media!r}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise MediaError(path, f"decoded frames have unexpected shape {frames.shape}")
    return _resize(frames, max_pixels, min_pixels)
