"""A rank's training batch of the tiny model's media prompts, for one DeepSpeed step outside Ray."""

from __future__ import annotations

import torch

from raytrain.data.batch import TrainBatch, response_positions


def rank_batch(prompts, rank: int, seed: int) -> TrainBatch:
    """Rank 0: three images; rank 1: a video and an image. Random responses, old log-probs and advantages."""
    video, image = prompts[0], prompts[2]
    rows = [image, image, image] if rank == 0 else [video, image]
    gen = torch.Generator().manual_seed(seed + rank)
    responses = [torch.randint(10, 200, (n,), generator=gen).tolist() for n in (5, 7, 4)[:len(rows)]]
    mask = response_positions(rows, responses)
    return TrainBatch(rows, responses, {
        "old_logprobs": -torch.rand(mask.shape, generator=gen) * mask - 3.0 * mask,
        "advantages": torch.randn(mask.shape, generator=gen) * mask,
        "loss_mask": mask,
    })
