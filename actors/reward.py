"""Reward actor: scores batches of responses with the pure functions in `rewards/`."""

from __future__ import annotations

import ray

from raytrain.config import RewardConfig
from rewards.outcome import score_response


@ray.remote(num_cpus=0.5)
class RewardActor:
    def __init__(self, reward: RewardConfig, answer_format: str):
        self.cfg = reward
        self.answer_format = answer_format

    def score(self, texts: list[str], num_tokens: list[int], labels: list[str]) -> list[dict[str, float]]:
        return [
            score_response(
                text, n, label, self.cfg.weights,
                max_len=self.cfg.max_len, buffer=self.cfg.overlong_buffer, answer_format=self.answer_format,
            )
            for text, n, label in zip(texts, num_tokens, labels)
        ]
