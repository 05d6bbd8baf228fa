"""Rollout actor: holds one engine and serves generation and weight updates."""

from __future__ import annotations

import os

import ray
import torch

from raytrain.config import ModelConfig, RolloutConfig, SamplingConfig
from raytrain.engines import create_engine
from raytrain.policy import Prompt, Sample


@ray.remote
class RolloutActor:
    def __init__(self, model: ModelConfig, rollout: RolloutConfig, weights: str | None = None):
        torch.set_num_threads(rollout.torch_threads)
        self.engine = create_engine(model, rollout, weights=weights)

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, greedy: bool = False) -> list[list[Sample]]:
        return self.engine.generate(prompts, sampling, greedy=greedy)

    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        return self.engine.update_weights(state, version)

    def version(self) -> int:
        return self.engine.version

    def pid(self) -> int:
        return os.getpid()


def start_rollout_actors(model: ModelConfig, rollout: RolloutConfig, *, weights: str | None = None, name_prefix: str | None = None) -> list:
    """`rollout.num_actors` actors; named (and so findable by Ray Train workers) when `name_prefix` is set."""
    actors = []
    for i in range(rollout.num_actors):
        options = {"num_cpus": rollout.num_cpus, "num_gpus": rollout.num_gpus}
        if name_prefix:
            options["name"] = f"{name_prefix}-rollout-{i}"
        actors.append(RolloutActor.options(**options).remote(model, rollout, weights))
    ray.get([a.version.remote() for a in actors])  # surface load errors here, not mid-training
    return actors
