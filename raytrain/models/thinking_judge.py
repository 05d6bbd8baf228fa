"""The thinking judge's model: batched greedy grading of responses with their media (SPEC section 3).

Any checkpoint of a model family (`raytrain.models.loading.FAMILIES`) works (reference:
SophiaVL-R1-Thinking-Reward-Model-3B, a Qwen2.5-VL-3B). The judge sees the question, the media
(a video as `judge.media.num_frames` uniformly sampled frames, an image as one frame,
decoded from the prompt's file with the trainer's own loader) and the response;
`rewards.judge_prompt` builds the prompt and parses the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raytrain.config.sections import JudgeConfig
from raytrain.data.media import decode_media
from rewards.judge_prompt import build_judge_prompt, parse_judge_score


@dataclass
class JudgeRequest:
    question: str
    response: str
    path: str | None  # media file; None grades the text alone
    media: str = "video"  # "video" or "image"


class JudgeModel:
    def __init__(self, cfg: JudgeConfig, device: str = "cpu"):
        if cfg.model is None:
            raise ValueError("judge.model is not set")
        self.cfg = cfg
        self.device = torch.device(device)
        # Here, not at the top: the reward actor imports this module for `JudgeRequest` alone, and the
        # model-loading stack (transformers' processors, torchvision) costs its process seconds of start-up.
        from raytrain.models.loading import load_family, load_policy, without_lora

        self.family = load_family(cfg.model)
        # Left padding: every row of a batch ends where its generation starts.
        self.family.tokenizer.padding_side = "left"
        self.model = load_policy(without_lora(cfg.model)).to(self.device).eval()

    def _frames(self, request: JudgeRequest) -> np.ndarray | None:
        if request.path is None:
            return None
        return decode_media(request.path, request.media, self.cfg.media)

    @torch.no_grad()
    def grade(self, requests: list[JudgeRequest]) -> list[float]:
        """One score in [0, 1] per request (unparsable judge output scores 0). Media errors raise
        `raytrain.data.media.MediaError`; the caller counts them as judge failures."""
        inputs = self.encode(requests).to(self.device)
        tokenizer = self.family.tokenizer
        out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.cfg.max_new_tokens,
                                  pad_token_id=tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [parse_judge_score(text) for text in decoded]

    def encode(self, requests: list[JudgeRequest]):
        """The left-padded model inputs of a batch of requests: chat prompt, media, generation prompt."""
        texts, images, videos = [], [], []
        for r in requests:
            frames = self._frames(r)
            if frames is not None:
                (videos if r.media == "video" else images).append(frames if r.media == "video" else frames[0])
            prompt = build_judge_prompt(r.question, r.response, self.cfg.prompt)
            texts.append(self.family.chat_text(prompt, r.media if frames is not None else None))
        return self.family.processor_inputs(texts, images, videos, self.cfg.media)
