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
# Larger frames are refused before decoding: one 16-frame sample of them would need gigabytes.
MAX_FRAME_PIXELS = 7680 * 4320  # 8K UHD

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


def frame_count(total: int, fps: float | None, num_frames: int, *, sample_fps: float | None = None,
                min_frames: int = 1, max_frames: int | None = None) -> int:
    """How many frames to sample from a ``total``-frame clip.

    Without ``sample_fps``: always ``num_frames`` (uniform policy). With it:
    one frame per ``1 / sample_fps`` seconds of the clip, clamped to
    ``[min_frames, max_frames]``; a clip whose fps is unknown falls back to
    ``num_frames``.
    """
    if sample_fps is None or not fps or not math.isfinite(fps) or fps <= 0:
        return num_frames
    n = round(total / fps * sample_fps)
    return max(min_frames, min(n, max_frames) if max_frames is not None else n)


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


def check_file(path: str) -> None:
    """Cheap checks (no decoding): exists, regular, not empty, readable."""
    if not os.path.exists(path):
        if os.path.islink(path):
            raise MediaError(path, f"broken symbolic link (its target {os.readlink(path)} does not exist)")
        raise MediaError(path, "file not found")
    if not os.path.isfile(path):
        raise MediaError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise MediaError(path, "permission denied: the file is not readable by this user") from None
    except OSError as exc:
        raise MediaError(path, f"cannot open the file: {exc.strerror}") from None


def _check_resolution(path: str, width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise MediaError(path, f"resolution {width}x{height} is larger than 8K ({MAX_FRAME_PIXELS} pixels per frame)")


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

    check_file(path)
    try:
        reader = VideoReader(path, ctx=cpu(0), num_threads=1)
    except Exception as exc:  # decord raises DECORDError or RuntimeError
        raise MediaError(path, _decord_reason(exc)) from exc
    if len(reader) == 0:
        raise MediaError(path, "video has no frames")
    return reader


def _open_image(path: str) -> tuple[Image.Image, str | None]:
    """The decoded RGB image and its file format (``png``, ``jpeg``...)."""
    check_file(path)
    try:
        with Image.open(path) as img:
            _check_resolution(path, img.width, img.height)  # from the header, before decoding
            return img.convert("RGB"), img.format.lower() if img.format else None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(path, f"cannot decode image: {exc}") from exc


def _video_header(path: str) -> tuple[str, int, int]:
    """(codec, width, height) from the container header, without decoding a frame."""
    import av

    check_file(path)
    try:
        with av.open(path) as container:
            video = container.streams.video
            if not video:
                kinds = sorted({s.type for s in container.streams})
                if "audio" in kinds:
                    raise MediaError(path, "no video stream (audio only)")
                raise MediaError(path, f"no video stream (streams: {', '.join(kinds) or 'none'})")
            ctx = video[0].codec_context
            return ctx.name, int(ctx.width), int(ctx.height)
    except av.FFmpegError as exc:
        raise MediaError(path, f"cannot decode video: corrupt or unrecognised container ({exc.strerror})") from exc


def probe(path: str, media: str) -> dict:
    """duration, fps, num_frames, width, height and codec of a file.

    Videos: the header is read first (audio-only files and oversized frames are
    refused without decoding), then the first and last frames are decoded to
    prove the clip reads end to end. A video needs at least two frames.
    """
    path = str(path)
    if media == "image":
        img, fmt = _open_image(path)
        return {"duration": None, "fps": None, "num_frames": 1, "width": img.width, "height": img.height, "codec": fmt}
    if media != "video":
        raise ValueError(f"media must be 'video' or 'image', got {media!r}")
    codec, width, height = _video_header(path)
    _check_resolution(path, width, height)
    reader = _open_video(path)
    total = len(reader)
    if total < 2:
        raise MediaError(path, "video has only 1 frame: a still, not a clip (save it as an image)")
    try:
        first = reader[0].shape
        reader[total - 1]
        fps = float(reader.get_avg_fps())
    except Exception as exc:
        raise MediaError(path, _decord_reason(exc)) from exc
    fps = fps if math.isfinite(fps) and fps > 0 else None
    return {
        "duration": total / fps if fps else None,
        "fps": fps,
        "num_frames": total,
        "width": int(first[1]),
        "height": int(first[0]),
        "codec": codec,
    }


def _resize(frames: np.ndarray, max_pixels: int, min_pixels: int) -> np.ndarray:
    h, w = fit_to_budget(frames.shape[1], frames.shape[2], max_pixels=max_pixels, min_pixels=min_pixels)
    if (h, w) == frames.shape[1:3]:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


def decode_media(path: str, media: str, budget) -> np.ndarray:
    """`load_frames` under a `raytrain.config.MediaConfig` budget (frame policy and pixel caps)."""
    return load_frames(path, media, budget.num_frames, max_pixels=budget.max_pixels, min_pixels=budget.min_pixels,
                       sample_fps=budget.sample_fps, min_frames=budget.min_frames, max_frames=budget.max_frames)


def load_frames(
    path: str, media: str, num_frames: int, *, max_pixels: int, min_pixels: int,
    sample_fps: float | None = None, min_frames: int = 1, max_frames: int | None = None,
) -> np.ndarray:
    """uint8 frames ``[T, H, W, 3]`` resized to the pixel budget (scaled, never cropped).

    Videos give ``T`` uniformly spaced frames, ``T`` from :func:`frame_count`
    (``num_frames``, or per ``sample_fps`` within ``[min_frames, max_frames]``;
    frames repeat when the clip is shorter); images give ``T = 1``.
    """
    path = str(path)
    if media == "image":
        frames = np.asarray(_open_image(path)[0])[None]
    elif media == "video":
        reader = _open_video(path)
        try:
            n = frame_count(len(reader), reader.get_avg_fps(), num_frames, sample_fps=sample_fps,
                            min_frames=min_frames, max_frames=max_frames)
            frames = reader.get_batch(uniform_indices(len(reader), n)).asnumpy()
        except Exception as exc:
            raise MediaError(path, _decord_reason(exc)) from exc
    else:
        raise ValueError(f"media must be 'video' or 'image', got {media!r}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise MediaError(path, f"decoded frames have unexpected shape {frames.shape}")
    return _resize(frames, max_pixels, min_pixels)
