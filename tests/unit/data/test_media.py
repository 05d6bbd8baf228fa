"""Frame sampling, pixel budget and decoding errors (raytrain.data.media)."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from raytrain.data.media import MAX_FRAME_PIXELS, MediaError, fit_to_budget, frame_count, load_frames, probe, uniform_indices

BUDGET = {"max_pixels": 56 * 56, "min_pixels": 28 * 28}


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory) -> str:
    """10 frames of 56x56 grey, frame t at brightness 20 * t + 10, so indices can be read back."""
    path = tmp_path_factory.mktemp("media") / "ramp.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = 56
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for t in range(10):
            frame = np.full((56, 56, 3), 20 * t + 10, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("media") / "img.png"
    Image.fromarray(np.full((40, 60, 3), 200, dtype=np.uint8)).save(path)
    return str(path)


def _frame_ids(frames: np.ndarray) -> list[int]:
    return [round((f.mean() - 10) / 20) for f in frames]


def test_uniform_indices_hand_cases():
    assert uniform_indices(10, 4) == [1, 3, 6, 8]
    assert uniform_indices(2, 4) == [0, 0, 1, 1]
    assert uniform_indices(1, 3) == [0, 0, 0]
    assert uniform_indices(8, 8) == list(range(8))
    assert uniform_indices(5, 1) == [2]


@pytest.mark.parametrize("total,n", [(1, 16), (3, 16), (16, 16), (17, 16), (1000, 16), (7, 3)])
def test_uniform_indices_properties(total, n):
    idx = uniform_indices(total, n)
    assert len(idx) == n
    assert idx == sorted(idx)
    assert 0 <= idx[0] and idx[-1] < total


@pytest.mark.parametrize("total,n", [(0, 4), (-1, 4), (4, 0)])
def test_uniform_indices_rejects_bad_arguments(total, n):
    with pytest.raises(ValueError):
        uniform_indices(total, n)


@pytest.mark.parametrize("size,mn,mx,expected", [
    # Reference values from transformers' Qwen2-VL smart_resize.
    ((1080, 1920), 3136, 200704, (336, 588)),
    ((720, 1280), 3136, 401408, (448, 840)),
    ((56, 56), 3136, 3136, (56, 56)),
    ((30, 500), 3136, 1003520, (28, 504)),
    ((10, 10), 3136, 1003520, (56, 56)),
    ((56, 56), 12544, 1003520, (112, 112)),
    ((480, 360), 784, 50176, (252, 168)),
    ((1000, 37), 784, 50176, (1008, 28)),
    ((100, 200), 1, 10**6, (112, 196)),
])
def test_fit_to_budget_matches_smart_resize(size, mn, mx, expected):
    assert fit_to_budget(*size, max_pixels=mx, min_pixels=mn) == expected


def test_fit_to_budget_invariants():
    for h, w in [(1080, 1920), (1920, 1080), (57, 3000), (333, 444)]:
        oh, ow = fit_to_budget(h, w, max_pixels=200704, min_pixels=3136)
        assert oh % 28 == 0 and ow % 28 == 0
        assert 3136 <= oh * ow <= 200704
        assert abs(oh / ow - h / w) / (h / w) < 0.2


def test_fit_to_budget_rejects_bad_arguments():
    with pytest.raises(ValueError):
        fit_to_budget(0, 10, max_pixels=3136, min_pixels=784)
    with pytest.raises(ValueError):
        fit_to_budget(10, 10, max_pixels=100, min_pixels=10)
    with pytest.raises(ValueError):
        fit_to_budget(10, 10, max_pixels=3136, min_pixels=6272)
    with pytest.raises(ValueError):
        fit_to_budget(10, 3000, max_pixels=3136, min_pixels=784)


def test_load_video_samples_uniformly(ramp_video):
    frames = load_frames(ramp_video, "video", 4, **BUDGET)
    assert frames.shape == (4, 56, 56, 3) and frames.dtype == np.uint8
    assert _frame_ids(frames) == [1, 3, 6, 8]


def test_load_video_repeats_frames_of_short_clips(ramp_video):
    frames = load_frames(ramp_video, "video", 16, **BUDGET)
    assert frames.shape == (16, 56, 56, 3)
    assert _frame_ids(frames) == uniform_indices(10, 16)


def test_load_video_resizes_to_budget(ramp_video):
    assert load_frames(ramp_video, "video", 2, max_pixels=28 * 28, min_pixels=28 * 28).shape == (2, 28, 28, 3)
    upscaled = load_frames(ramp_video, "video", 2, max_pixels=10**6, min_pixels=112 * 112)
    assert upscaled.shape == (2, 112, 112, 3)


def test_load_image(image):
    frames = load_frames(image, "image", 16, **BUDGET)
    # 40x60 rounds to 28x56 (multiples of 28, aspect kept, no crop).
    assert frames.shape == (1, 28, 56, 3)
    assert abs(float(frames.mean()) - 200) < 2


def test_probe(ramp_video, image):
    assert probe(ramp_video, "video") == {
        "duration": 2.5, "fps": 4.0, "num_frames": 10, "width": 56, "height": 56, "codec": "h264"}
    assert probe(image, "image") == {
        "duration": None, "fps": None, "num_frames": 1, "width": 60, "height": 40, "codec": "png"}


def test_frame_count_policies():
    # Uniform (default): always num_frames, whatever the clip.
    assert frame_count(10, 4.0, 16) == 16
    assert frame_count(1000, 30.0, 16) == 16
    # fps-based: 4 fps over a 10 s clip = 40, clamped to max_frames; a 1 s clip = 4, raised to min_frames.
    assert frame_count(300, 30.0, 16, sample_fps=4, min_frames=8, max_frames=32) == 32
    assert frame_count(30, 30.0, 16, sample_fps=4, min_frames=8, max_frames=32) == 8
    assert frame_count(150, 30.0, 16, sample_fps=4, min_frames=8, max_frames=32) == 20
    assert frame_count(150, 30.0, 16, sample_fps=4, min_frames=1) == 20
    # Unknown fps falls back to num_frames.
    for fps in (None, 0.0, float("nan")):
        assert frame_count(150, fps, 16, sample_fps=4, min_frames=8, max_frames=32) == 16


def test_load_video_fps_policy(ramp_video):
    # 10 frames at 4 fps = 2.5 s; at 2 fps that is 5 frames, uniform over the clip.
    frames = load_frames(ramp_video, "video", 16, **BUDGET, sample_fps=2.0, min_frames=2, max_frames=8)
    assert _frame_ids(frames) == uniform_indices(10, 5) == [1, 3, 5, 7, 9]
    assert load_frames(ramp_video, "video", 16, **BUDGET, sample_fps=100.0, min_frames=2, max_frames=6).shape[0] == 6
    assert load_frames(ramp_video, "video", 16, **BUDGET, sample_fps=0.1, min_frames=3, max_frames=6).shape[0] == 3


def test_budget_keeps_corner_watermarks(tmp_path):
    """Scaled, never cropped: a logo in each corner of a wide frame is still there after the budget."""
    img = np.full((90, 160, 3), 60, dtype=np.uint8)
    for y, x in ((0, 0), (0, 144), (74, 0), (74, 144)):
        img[y:y + 16, x:x + 16] = 250
    Image.fromarray(img).save(tmp_path / "wide.png")
    frames = load_frames(str(tmp_path / "wide.png"), "image", 1, max_pixels=56 * 112, min_pixels=28 * 28)
    h, w = frames.shape[1:3]
    assert (h, w) == (56, 84)  # smart_resize of 90x160 under 6272 pixels
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        assert frames[0, y, x].mean() > 200, (y, x)


def _bad_files(tmp_path, ramp_video, image):
    data = open(ramp_video, "rb").read()
    png = open(image, "rb").read()
    files = {
        "empty.mp4": (b"", "video", "empty file (0 bytes)"),
        "truncated.mp4": (data[:300], "video", "cannot decode video"),
        "half.mp4": (data[: len(data) // 2], "video", "cannot decode video"),
        "text.mp4": (b"this is not a video\n" * 10, "video", "cannot decode video"),
        "text.png": (b"this is not an image\n", "image", "cannot decode image"),
        "truncated.png": (png[: len(png) // 2], "image", "cannot decode image"),
        "empty.png": (b"", "image", "empty file (0 bytes)"),
    }
    # Frames larger than 8K are refused from the header, before any pixel is decoded.
    Image.new("1", (MAX_FRAME_PIXELS // 4000 + 1, 4000)).save(tmp_path / "huge.png")
    files["huge.png"] = (None, "image", "is larger than 8K")
    # A video of one frame is a still, not a clip.
    with av.open(str(tmp_path / "one.mp4"), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode())
    files["one.mp4"] = (None, "video", "only 1 frame")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    files["dangling.mp4"] = (None, "video", "broken symbolic link")
    for name, (content, _, _) in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    return [(str(tmp_path / name), media, reason) for name, (_, media, reason) in files.items()]


def test_bad_files_raise_media_error(tmp_path, ramp_video, image):
    cases = _bad_files(tmp_path, ramp_video, image) + [
        (str(tmp_path / "missing.mp4"), "video", "file not found")]
    for path, media, reason in cases:
        # Only probing refuses 1-frame videos; the streaming decoder repeats the frame.
        calls = [lambda p=path, m=media: probe(p, m)]
        if not path.endswith("one.mp4"):
            calls.append(lambda p=path, m=media: load_frames(p, m, 4, **BUDGET))
        for call in calls:
            with pytest.raises(MediaError) as info:
                call()
            err = info.value
            assert err.path == path
            assert reason in err.reason, (path, err.reason)
            assert str(err) == f"{path}: {err.reason}"
            # decord's build-path prefix ("[hh:mm:ss] /github/...") is noise for users.
            assert "/github/" not in err.reason


def test_unreadable_file_is_reported_as_such(ramp_video):
    """Permission problems name themselves. Root reads anything, so the check runs in a child that drops to nobody."""
    import os
    import shutil
    import tempfile

    folder = tempfile.mkdtemp()
    try:
        os.chmod(folder, 0o755)
        locked = os.path.join(folder, "locked.mp4")
        shutil.copy(ramp_video, locked)
        os.chmod(locked, 0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report the reason through the pipe, never return into pytest
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    load_frames(locked, "video", 2, **BUDGET)
                    message = "no error"
                except MediaError as exc:
                    message = exc.reason
                os.write(write, message.encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        with os.fdopen(read) as fh:
            assert fh.read() == "permission denied: the file is not readable by this user"
    finally:
        shutil.rmtree(folder)
