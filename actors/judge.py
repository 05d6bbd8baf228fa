"""Judge actor: holds one thinking-judge model (`raytrain.models.thinking_judge.JudgeModel`) and grades batches."""

from __future__ import annotations

import ray
import torch

from raytrain.config.sections import JudgeConfig
from raytrain.models.thinking_judge import JudgeModel, JudgeRequest


@ray.remote
class JudgeActor:
    def __init__(self, cfg: JudgeConfig):
        torch.set_num_threads(cfg.torch_threads)
        device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.judge = JudgeModel(cfg, device=device)

    def grade(self, requests: list[JudgeRequest]) -> list[float]:
        return self.judge.grade(requests)

    def ready(self) -> bool:
        return True


def start_judge_actors(cfg: JudgeConfig, max_restarts: int = 0) -> list:
    """`max_restarts`: Ray restarts a judge actor that died (its batches meanwhile score 0 as judge failures)."""
    actors = [JudgeActor.options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=dict(cfg.resources),
                                 max_restarts=max_restarts).remote(cfg)
              for _ in range(cfg.num_actors)]
    ray.get([a.ready.remote() for a in actors])  # surface load errors at start, not mid-training
    return actors
