"""Reward-scoring throughput on CPU: outcome rewards alone, and with PRPO paragraph rewards
(tiny random CLIP + YAKE), with the media embedding shared by a prompt's G responses vs one per response.

    python bench/reward_scoring.py [--prompts 4] [--group 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from actors.reward import RewardScorer  # noqa: E402
from raytrain.config.sections import RewardConfig  # noqa: E402
from raytrain.data.synthetic import make_synthetic_dataset  # noqa: E402
from raytrain.models.tiny import save_tiny_clip  # noqa: E402

RESPONSE = ("<think>The jaw line shows a blending seam in frame {i}, and the skin texture repeats.\n\n"
            "The lips drift out of sync with the face while the lighting stays natural.</think>\n\n"
            "<answer>{answer}</answer>")


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        clip = save_tiny_clip(Path(tmp) / "clip")
        make_synthetic_dataset(Path(tmp) / "data", num_train=args.prompts, num_test=0, seed=0)
        videos = sorted(str(p) for p in (Path(tmp) / "data").rglob("*.mp4"))[: args.prompts]
        n = len(videos) * args.group
        texts = [RESPONSE.format(i=i, answer=("fake", "real")[i % 2]) for i in range(n)]
        labels, lengths = ["fake"] * n, [60] * n
        media = [(v, "video") for v in videos for _ in range(args.group)]
        outcome = RewardScorer(RewardConfig(), "word")
        paragraph = RewardScorer(RewardConfig(weights={**RewardConfig().weights, "paragraph": 1.0},
                                              paragraph={"encoder": str(clip), "media": {"max_pixels": 3136}}), "word")
        paragraph.score(texts[:1], lengths[:1], labels[:1], media=media[:1])  # warm-up (YAKE, first forward)
        t_outcome = _time(lambda: outcome.score(texts, lengths, labels))
        t_shared = _time(lambda: paragraph.score(texts, lengths, labels, media=media))
        # One call per response: every response decodes and embeds its media again.
        t_each = _time(lambda: [paragraph.score([t], [n], [y], media=[m]) for t, n, y, m in zip(texts, lengths, labels, media)])
    print(f"{n} responses ({len(videos)} prompts x G={args.group}), 1 CPU thread")
    print(f"outcome rewards only:                      {n / t_outcome:10.0f} responses/s")
    print(f"+ paragraph rewards, media shared per prompt: {n / t_shared:7.1f} responses/s")
    print(f"+ paragraph rewards, media per response:      {n / t_each:7.1f} responses/s")
    print(f"sharing the media embedding across the group: {t_each / t_shared:.2f}x faster")


if __name__ == "__main__":
    main()
