"""Synthetic deepfake media for tests and smoke runs.

The clips are cartoons, not faces, but each fake category carries a strong,
consistent artifact of its kind so that a tiny randomly initialised
Qwen2.5-VL (patch 14, spatial merge 2, temporal patch 2) can learn real vs
fake by RL within a few dozen steps:

- real: a smooth gradient scene with a face-like ellipse drifting slowly;
- face-swap: the face replaced by a differently coloured patch with a fine
  high-contrast blending pattern and a hard rectangular seam;
- lip-sync: the mouth flickers between a striped open state and a dark
  closed state on alternating frames (images: a striped mouth);
- text-to-video: a high-frequency checkerboard generator texture over most
  of the frame.

A watermark sits on a share of both classes so that it is never a cue
(SPEC section 8: watermarks are kept, never cropped).

`make_synthetic_dataset` writes a GenBuster-layout set of videos and images;
`make_synthetic_dfr5` a DF-R5-shaped set of images (one domain per fake
category, reals in every domain) with DX-LLaVA's LLaVA JSON lists beside it,
whose answers explain the cue of each image and end in ``### Answer:``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image

from raytrain.data.layouts.llava import IMAGE_TOKEN
from raytrain.data.questions import DX_LLAVA_QUESTION

FAKE_CATEGORIES = ("face-swap", "lip-sync", "text-to-video")
REAL_CATEGORY = "camera"
SPLITS = ("train", "test")
SKIN_TONES = np.array(
    [(224, 172, 105), (241, 194, 125), (198, 134, 66), (141, 85, 36), (255, 219, 172)], dtype=np.float32
)
# Hues far from any skin tone, so a swapped face is obvious.
SWAP_COLOURS = np.array([(40, 200, 80), (60, 90, 230), (200, 50, 200), (30, 200, 220)], dtype=np.float32)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, hh: float, hw: float) -> np.ndarray:
    return (np.abs(yy - cy) <= hh) & (np.abs(xx - cx) <= hw)


class _Scene:
    """One item's random parameters; ``frame(t)`` renders frame ``t``."""

    def __init__(self, rng: np.random.Generator, size: int, num_frames: int, category: str, media: str,
                 watermark: bool):
        self.rng, self.size, self.category, self.media = rng, size, category, media
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * self.xx + np.sin(angle) * self.yy) / size
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
        self.background = (c0 + (c1 - c0) * ramp[..., None]).astype(np.float32)
        self.rx = size * rng.uniform(0.17, 0.21)
        self.ry = self.rx * rng.uniform(1.2, 1.35)
        self.c0 = np.array([rng.uniform(0.4, 0.6), rng.uniform(0.42, 0.58)]) * size
        # Slow, consistent drift: at most ~12% of the frame over the whole clip.
        heading = rng.uniform(0, 2 * np.pi)
        speed = min(rng.uniform(0.3, 0.7), 0.12 * size / num_frames)
        self.velocity = speed * np.array([np.sin(heading), np.cos(heading)])
        self.skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.uniform(-10, 10, 3)
        self.mouth_phase = rng.uniform(0, 2 * np.pi)
        self.swap_colour = SWAP_COLOURS[rng.integers(len(SWAP_COLOURS))]
        self.cell = max(2, size // 28)  # checkerboard cell in pixels; 2 at 56 px
        self.texture_area = (rng.uniform(0.0, 0.1, 2) * size, rng.uniform(0.85, 1.0, 2) * size)
        self.watermark = self._watermark_layer(rng) if watermark else None

    def _watermark_layer(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A bright logo-like box with dark letter strokes in a random corner."""
        s = self.size
        h, w = max(6, round(s * 0.14)), max(10, round(s * 0.32))
        logo = np.full((h, w, 3), 240.0, dtype=np.float32)
        for x in range(2, w - 2, 3):
            top = rng.integers(1, 3)
            logo[top:h - 1, x] = 30.0 if rng.random() < 0.75 else 240.0
        logo[h // 2, 2:w - 2:2] = 30.0
        mask = np.zeros((s, s), dtype=bool)
        layer = np.zeros((s, s, 3), dtype=np.float32)
        corner = rng.integers(4)
        y0 = 2 if corner < 2 else s - h - 2
        x0 = 2 if corner % 2 == 0 else s - w - 2
        mask[y0:y0 + h, x0:x0 + w] = True
        layer[y0:y0 + h, x0:x0 + w] = logo
        return mask, layer

    def frame(self, t: int) -> np.ndarray:
        yy, xx, rx, ry = self.yy, self.xx, self.rx, self.ry
        img = self.background.copy()
        cy, cx = self.c0 + self.velocity * t
        face = _ellipse(yy, xx, cy, cx, ry, rx)
        img[face] = self.skin
        if self.category == "face-swap":
            seam = _box(yy, xx, cy, cx, 0.95 * ry, 1.05 * rx)
            # Blending artifacts: a fine, high-contrast pattern over the pasted face.
            fine = (np.floor(yy / self.cell) + np.floor(xx / self.cell)) % 2
            patch = 0.5 * self.swap_colour + 120.0 * fine[..., None]
            img[seam] = 0.15 * img[seam] + 0.85 * patch[seam]
            edge = seam & ~_box(yy, xx, cy, cx, 0.95 * ry - 1, 1.05 * rx - 1)
            img[edge] = 10.0
        eye = 0.12 * rx + 0.5
        for side in (-1, 1):
            img[_ellipse(yy, xx, cy - 0.25 * ry, cx + side * 0.38 * rx, eye, eye)] = 20.0
        mouth_y = cy + 0.45 * ry
        if self.category == "lip-sync":
            mouth = _box(yy, xx, mouth_y, cx, 0.4 * ry, 0.9 * rx)
            if self.media == "image" or t % 2 == 0:
                stripes = np.floor(yy / 2) % 2  # 2-pixel black/white bars: "teeth"
                img[mouth] = (15.0 + 235.0 * stripes)[mouth, None]
            else:
                img[mouth] = (20.0, 5.0, 5.0)
        else:
            # Real mouths open and close slowly, in step with the drifting face.
            open_h = 0.08 * ry * (1.0 + 0.5 * np.sin(self.mouth_phase + 0.4 * t))
            img[_ellipse(yy, xx, mouth_y, cx, open_h + 0.5, 0.35 * rx)] = (120.0, 30.0, 40.0)
        if self.category == "text-to-video":
            (y0, x0), (y1, x1) = self.texture_area
            area = (yy >= y0) & (yy <= y1) & (xx >= x0) & (xx <= x1)
            checker = (np.floor(yy / self.cell) + np.floor(xx / self.cell)) % 2
            img[area] = 0.35 * img[area] + (255.0 * 0.65) * checker[area, None]
        if self.watermark is not None:
            mask, layer = self.watermark
            img[mask] = layer[mask]
        img += self.rng.normal(0.0, 3.0, img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)


def _check_counts(**counts: int) -> None:
    for name, count in counts.items():
        if count < 0 or count % 2:
            raise ValueError(f"{name} must be a non-negative even number (half real, half fake), got {count}")


def _clear_splits(out: Path, folders: list[Path], overwrite: bool) -> None:
    """Existing dataset folders are an error unless ``overwrite`` (then they go, so no stale files survive)."""
    for target in folders:
        if target.exists() and any(target.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{target} already has files; refusing to overwrite them")
            shutil.rmtree(target)


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        # crf 10: near-lossless, so 2-pixel artifacts survive at 56 px.
        # Determinism: x264's output depends on the thread count, and its
        # lookahead reads uninitialised padding when a side is not a
        # multiple of 16 (56 px gave different bytes run to run).
        stream.options = {"crf": "10", "preset": "medium", "x264-params": "rc-lookahead=0:mbtree=0"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _spread(n: int, share: float) -> list[bool]:
    """Exactly ``round(n * share)`` flags, evenly spaced over ``n`` slots."""
    return [int((i + 1) * share + 1e-9) > int(i * share + 1e-9) for i in range(n)]


def _plan(split: str, count: int, rng: np.random.Generator, image_share: float,
          watermark_share: float) -> list[dict]:
    items = []
    for label in ("real", "fake"):
        n = count // 2
        images = _spread(n, image_share)
        marked = set(rng.choice(n, size=round(n * watermark_share), replace=False).tolist())
        for i in range(n):
            items.append({
                "split": split,
                "label": label,
                # Round-robin keeps categories even and, with _spread, images
                # spread across categories too.
                "category": REAL_CATEGORY if label == "real" else FAKE_CATEGORIES[i % len(FAKE_CATEGORIES)],
                "media": "image" if images[i] else "video",
                "watermark": i in marked,
                "index": i,
            })
    return items


def make_synthetic_dataset(
    out: Path,
    *,
    num_train: int = 320,
    num_test: int = 96,
    seed: int = 0,
    size: int = 56,
    num_frames: int = 8,
    fps: int = 8,
    image_share: float = 0.25,
    watermark_share: float = 0.3,
    overwrite: bool = False,
    progress: Callable[[], None] | None = None,
) -> dict:
    """Write a GenBuster-layout dataset ``OUT/<split>/<real|fake>/<category>/<name>``.

    Half of each split is real, half fake; fakes are spread evenly over
    :data:`FAKE_CATEGORIES`. ``OUT/metadata.jsonl`` records every file.
    Existing split folders are an error unless ``overwrite`` (then they are
    replaced, so no stale files from an earlier run survive). ``progress``
    is called once per written item. Returns counts.
    """
    out = Path(out)
    if size < 28 or size % 2:
        raise ValueError(f"size must be even and >= 28 (yuv420p, one 28-pixel patch), got {size}")
    _check_counts(num_train=num_train, num_test=num_test)
    if num_frames < 1 or fps < 1:
        raise ValueError(f"num_frames and fps must be positive, got {num_frames} and {fps}")
    for name, share in (("image_share", image_share), ("watermark_share", watermark_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {share}")
    _clear_splits(out, [out / split for split in SPLITS], overwrite)

    plan_rng = np.random.default_rng(seed)
    items = [it for split, count in zip(SPLITS, (num_train, num_test)) if count
             for it in _plan(split, count, plan_rng, image_share, watermark_share)]
    records = []
    for it in items:
        ext = ".png" if it["media"] == "image" else ".mp4"
        name = f"{it['split']}-{it['label']}-{it['index']:05d}{ext}"
        rel = Path(it["split"], it["label"], it["category"], name)
        # Per-item generator: an item's pixels do not depend on generation order.
        item_rng = np.random.default_rng(
            [seed, SPLITS.index(it["split"]), int(it["label"] == "fake"), it["index"]])
        scene = _Scene(item_rng, size, num_frames, it["category"], it["media"], it["watermark"])
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        if it["media"] == "image":
            Image.fromarray(scene.frame(0)).save(out / rel, format="PNG")
        else:
            _write_video(out / rel, [scene.frame(t) for t in range(num_frames)], fps)
        records.append({"path": rel.as_posix(), "label": it["label"], "category": it["category"],
                        "split": it["split"], "watermark": it["watermark"], "media": it["media"]})
        if progress is not None:
            progress()

    records.sort(key=lambda r: r["path"])
    with open(out / "metadata.jsonl", "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")
    return {
        "out": str(out),
        "total": len(records),
        "splits": {s: dict(Counter(r["label"] for r in records if r["split"] == s)) for s in SPLITS},
        "categories": dict(Counter(r["category"] for r in records if r["label"] == "fake")),
        "media": dict(Counter(r["media"] for r in records)),
        "watermark": dict(Counter(r["label"] for r in records if r["watermark"])),
    }


# What a DX-LLaVA target says about each kind of synthetic image: its cue, in paragraphs (PRPO's unit).
EXPLANATIONS = {
    REAL_CATEGORY: "**Light**: natural, consistent lighting.\n\n**Face**: intact, with no seams.",
    "face-swap": "**Seam**: a hard seam frames the face.\n\n**Skin**: blending artifacts, unnatural colour.",
    "lip-sync": "**Mouth**: distorted, striped lips.\n\n**Region**: only the mouth looks edited.",
    "text-to-video": "**Texture**: a checkerboard artifact.\n\n**Grid**: a synthetic grid over the frame.",
}


def make_synthetic_dfr5(
    out: Path,
    *,
    num_train: int = 96,
    num_test: int = 48,
    seed: int = 0,
    size: int = 56,
    watermark_share: float = 0.3,
    overwrite: bool = False,
    progress: Callable[[], None] | None = None,
) -> dict:
    """Write a DF-R5-shaped image set ``OUT/<domain>/<split>/<real|fake>/*.png`` and its LLaVA JSON lists
    ``OUT/train.json`` and ``OUT/test.json`` (the `llava` layout of `jobs.prepare_data`).

    Each domain is one fake category of :data:`FAKE_CATEGORIES` (its fakes carry that cue) and holds as
    many reals; the answers are `EXPLANATIONS` ending in ``### Answer: LABEL``, ``binary_label`` 1 for
    fakes. A split's count is spread evenly, so it must be a multiple of 2 x the domains. Returns counts.
    """
    out = Path(out)
    _check_counts(num_train=num_train, num_test=num_test)
    per = 2 * len(FAKE_CATEGORIES)
    if num_train % per or num_test % per:
        raise ValueError(f"num_train and num_test must be multiples of {per} (real and fake in each domain)")
    _clear_splits(out, [out / domain for domain in FAKE_CATEGORIES], overwrite)
    rng = np.random.default_rng(seed)
    lists: dict[str, list[dict]] = {}
    for split, count in zip(SPLITS, (num_train, num_test)):
        lists[split] = []
        for d, domain in enumerate(FAKE_CATEGORIES):
            for label in ("real", "fake"):
                n = count // per
                marked = set(rng.choice(n, size=round(n * watermark_share), replace=False).tolist())
                category = domain if label == "fake" else REAL_CATEGORY
                for i in range(n):
                    rel = Path(domain, split, label, f"{split}-{label}-{i:05d}.png")
                    item_rng = np.random.default_rng([seed, SPLITS.index(split), d, int(label == "fake"), i])
                    scene = _Scene(item_rng, size, 1, category, "image", i in marked)
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(scene.frame(0)).save(out / rel, format="PNG")
                    lists[split].append({
                        "id": rel.as_posix(), "image": rel.as_posix(), "binary_label": int(label == "fake"),
                        "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{DX_LLAVA_QUESTION}"},
                                          {"from": "gpt", "value": f"{EXPLANATIONS[category]}\n\n### Answer: {label}"}],
                    })
                    if progress is not None:
                        progress()
    for split, items in lists.items():
        (out / f"{split}.json").write_text(json.dumps(items, indent=1))
    return {"out": str(out), "total": sum(len(v) for v in lists.values()),
            "splits": {s: dict(Counter("fake" if i["binary_label"] else "real" for i in v)) for s, v in lists.items()},
            "domains": list(FAKE_CATEGORIES)}
