"""Tiny dataset trees in each real dataset's folder shape (SPEC section 8), for the layout tests.

Every file has its own content (so no two are exact duplicates unless a test
says so): 32x32 videos of 3 frames, 32x32 PNG images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
from PIL import Image

SIZE = 32
_counter = iter(range(1, 10**9))


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def write_video(path: Path, frames: int = 3, seed: int | None = None) -> Path:
    seed = next(_counter) if seed is None else seed
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_pixels(seed * 100 + t), format="rgb24")))
        container.mux(stream.encode())
    return path


def write_image(path: Path, seed: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(next(_counter) if seed is None else seed)).save(path)
    return path


def write_audio_only(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def genbuster(root: Path) -> Path:
    """``ROOT/<split>/{real,fake}/[subcategory/]``; ``sora`` is a generator, not a category."""
    for split in ("train", "test"):
        write_video(root / split / "real" / f"{split}-r1.mp4")
        write_video(root / split / "real" / f"{split}-r2.mp4")
        write_video(root / split / "fake" / "text-to-video" / f"{split}-f1.mp4")
        write_video(root / split / "fake" / "sora" / f"{split}-f2.mp4")
    (root / "metadata.jsonl").write_text(json.dumps({"path": "train/real/train-r1.mp4", "watermark": True}) + "\n")
    return root


def dfr5(root: Path) -> Path:
    """``ROOT/<domain>/{train,val,test}/{real,fake}/*.png``."""
    for domain in ("ddim", "StyleGAN3"):
        for split in ("train", "val", "test"):
            for label in ("real", "fake"):
                write_image(root / domain / split / label / f"{label}_0.png")
    return root


def ffpp(root: Path) -> Path:
    """Originals 000-005; fakes ``<target>_<source>`` join 000+003, 001+002; 004, 005 are alone."""
    for vid in ("000", "001", "002", "003", "004", "005"):
        write_video(root / "original_sequences" / "youtube" / "c23" / "videos" / f"{vid}.mp4")
    fakes = {"Deepfakes": ["000_003", "003_000"], "FaceSwap": ["000_003"], "FaceShifter": ["001_002"],
             "Face2Face": ["001_002", "004_005"], "NeuralTextures": ["002_001"]}
    for method, names in fakes.items():
        for name in names:
            write_video(root / "manipulated_sequences" / method / "c23" / "videos" / f"{name}.mp4")
    # Masks are not media to classify and must be ignored.
    write_video(root / "manipulated_sequences" / "Deepfakes" / "masks" / "videos" / "000_003.mp4")
    return root


def celebdf(root: Path) -> Path:
    """Identity 0's clips and the swaps onto them are train; identity 1's are in the official test list."""
    for name in ("id0_0000", "id0_0001", "id1_0000"):
        write_video(root / "Celeb-real" / f"{name}.mp4")
    for name in ("id0_id1_0000", "id0_id1_0001", "id1_id0_0000"):
        write_video(root / "Celeb-synthesis" / f"{name}.mp4")
    write_video(root / "YouTube-real" / "00000.mp4")
    write_video(root / "YouTube-real" / "00001.mp4")
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id1_0000.mp4\n0 Celeb-synthesis/id1_id0_0000.mp4\n1 YouTube-real/00000.mp4\n"
        "0 Celeb-synthesis/id9_id0_0000.mp4\n")
    return root


def dfdc(root: Path) -> Path:
    """Two parts; fakes name their original; one listed file is missing, one label is bad, one file unlisted."""
    part0, part1 = root / "dfdc_train_part_0", root / "dfdc_train_part_1"
    for name in ("aaa", "bbb", "ccc", "ddd", "eee", "unlisted"):
        write_video(part0 / f"{name}.mp4")
    for name in ("fff", "ggg"):
        write_video(part1 / f"{name}.mp4")
    meta0 = {
        "aaa.mp4": {"label": "FAKE", "split": "train", "original": "bbb.mp4"},
        "bbb.mp4": {"label": "REAL", "split": "train", "original": None},
        "ccc.mp4": {"label": "FAKE", "split": "train", "original": "bbb.mp4"},
        "ddd.mp4": {"label": "REAL", "split": "train", "original": None},
        "ghost.mp4": {"label": "FAKE", "split": "train", "original": "ddd.mp4"},
        "eee.mp4": {"label": "MAYBE", "split": "train", "original": None},
    }
    meta1 = {
        "fff.mp4": {"label": "REAL", "split": "test", "original": None},
        "ggg.mp4": {"label": "FAKE", "split": "test", "original": "fff.mp4"},
    }
    (part0 / "metadata.json").write_text(json.dumps(meta0))
    (part1 / "metadata.json").write_text(json.dumps(meta1))
    return root


def fakeavceleb(root: Path) -> Path:
    """The four folders; one fake's method is only in meta_data.csv."""
    ident = Path("African") / "men" / "id00076"
    write_video(root / "RealVideo-RealAudio" / ident / "00109.mp4")
    write_video(root / "RealVideo-RealAudio" / "Asian" / "women" / "id00077" / "00200.mp4")
    write_video(root / "FakeVideo-RealAudio" / ident / "00109_id00166_faceswap.mp4")
    write_video(root / "FakeVideo-RealAudio" / ident / "00109_2_id00166_wavtolip.mp4")
    write_video(root / "FakeVideo-RealAudio" / ident / "00109_7.mp4")
    write_video(root / "RealVideo-FakeAudio" / ident / "00109_fake.mp4")
    write_video(root / "FakeVideo-FakeAudio" / ident / "00109_id00166_fsgan-wavtolip.mp4")
    (root / "meta_data.csv").write_text(
        "source,target1,target2,method,category,type,race,gender,path\n"
        "id00076,id00076,id00166,wav2lip,C,FakeVideo-RealAudio,African,men,00109_7.mp4\n")
    return root


def clips_csv(root: Path) -> Path:
    """Collected clips labelled by a CSV, with a missing file, a bad label and an unlisted file."""
    for name in ("a", "b", "c", "d", "e"):
        write_video(root / "clips" / f"{name}.mp4")
    (root / "labels.csv").write_text(
        "path,label,category\nclips/a.mp4,real,\nclips/b.mp4,fake,lip-sync\nclips/c.mp4,FAKE,Face Swap\n"
        "clips/missing.mp4,real,\nclips/d.mp4,maybe,\n")
    return root


def clips_folders(root: Path) -> Path:
    write_video(root / "real" / "r.mp4")
    write_video(root / "fake" / "lip-sync" / "l.mp4")
    write_image(root / "fake" / "f.png")
    return root


def bad_input_zoo(root: Path) -> dict[str, str]:
    """A clips folder with one of every kind of bad file next to good ones.

    Returns {file name: expected words of its reject reason}; names not in it must be kept.
    """
    real, fake = root / "real", root / "fake"
    good = write_video(real / "good.mp4", frames=4)
    write_video(fake / "good-fake.mp4", frames=4)
    write_image(fake / "good.png")
    data = good.read_bytes()
    (real / "zero.mp4").write_bytes(b"")
    (real / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (real / "corrupt-header.mp4").write_bytes(b"\x00garbage-header" * 8 + data[128:])
    write_audio_only(fake / "audio-only.mp4")
    locked = write_video(fake / "locked.mp4")
    locked.chmod(0)
    bad_name = os.fsdecode(b"bad-\xff\xfe-name.mp4")
    write_video(fake / bad_name)
    (fake / "notes.docx").write_bytes(b"PK\x03\x04 not media")
    Image.new("1", (8000, 5000)).save(fake / "huge.png")
    write_video(fake / "single.mp4", frames=1)
    (real / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    shutil.copy(good, real / "zz-duplicate.mp4")
    expected = {
        "zero.mp4": "empty file (0 bytes)",
        "truncated.mp4": "cannot decode video",
        "corrupt-header.mp4": "cannot decode video",
        "audio-only.mp4": "no video stream (audio only)",
        "bad-\\xff\\xfe-name.mp4": "file name is not valid UTF-8",
        "notes.docx": "unsupported file type '.docx'",
        "huge.png": "larger than 8K",
        "single.mp4": "only 1 frame",
        "dangling.mp4": "broken symbolic link",
        "zz-duplicate.mp4": f"exact duplicate of {good} (same content hash)",
    }
    if os.geteuid() != 0:  # root reads any file: for root it is usable and must be kept
        expected["locked.mp4"] = "permission denied"
    return expected


LLAVA_QUESTION = "<image>\nIs this image real or fake? Give your reasoning, then ### Answer: real or fake."


def _llava_item(id_, image, answer, binary_label=None, human=LLAVA_QUESTION):
    item = {"id": id_, "image": image, "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]}
    if binary_label is not None:
        item["binary_label"] = binary_label
    return item


def llava(root: Path) -> Path:
    """A DF-R5 tree with LLaVA JSON lists beside it (DX-LLaVA's training data): good entries, entries to be
    rejected (no <image>, no gpt turn, contradicting or missing labels, missing or outside images, not an
    object) and an undecodable image."""
    root = dfr5(root)  # ddim/ and StyleGAN3/ with {train,val,test}/{real,fake}/
    write_image(root / "extra" / "loose.png")
    (root / "ddim" / "train" / "fake" / "broken.png").write_bytes(b"not a png at all")
    train = [
        _llava_item("f0", "ddim/train/fake/fake_0.png", "**Seam**: a hard edge around the face. ### Answer: fake", 1),
        _llava_item("r0", "ddim/train/real/real_0.png", "**Light**: natural, even skin pores.\n\n### Answer: real", 0),
        _llava_item("s0", "StyleGAN3/train/fake/fake_0.png", "**Texture**: too smooth.\n\n### Answer: fake"),  # label from the answer
        _llava_item("loose", "extra/loose.png", "Looks fine.", "0"),  # no answer line: the label alone
        _llava_item("no-image", "StyleGAN3/train/real/real_0.png", "### Answer: real", 0, human="Is it real?"),
        {"id": "no-gpt", "image": "ddim/val/real/real_0.png", "conversations": [{"from": "human", "value": LLAVA_QUESTION}],
         "binary_label": 0},
        _llava_item("contradiction", "ddim/val/fake/fake_0.png", "### Answer: real", 1),
        _llava_item("unlabelled", "StyleGAN3/val/fake/fake_0.png", "No verdict here."),
        _llava_item("missing", "ddim/train/fake/gone.png", "### Answer: fake", 1),
        _llava_item("outside", "../elsewhere.png", "### Answer: fake", 1),
        _llava_item("broken", "ddim/train/fake/broken.png", "**Cue**: noise. ### Answer: fake", 1),
        "not an object",
    ]
    (root / "train.json").write_text(json.dumps(train))
    (root / "test_subset.json").write_text(json.dumps([
        _llava_item("t0", "ddim/test/fake/fake_0.png", "**Cue**: grid. ### Answer: fake", 1)]))
    return root
