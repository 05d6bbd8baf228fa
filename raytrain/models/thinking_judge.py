"""The thinking judge's model: batched greedy grading of responses with their media (SPEC section 3).

Any image-text-to-text model with a chat template works (reference:
SophiaVL-R1-Thinking-Reward-Model-3B). The judge sees the question, the media
(a video as `judge.media.num_frames` uniformly sampled frames, an image as one frame,
decoded from the prompt's file with the trainer's own loader) and the response;
`rewards.judge_prompt` builds the prompt and parses the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raytrain.config import JudgeConfig
from raytrain.data.media import decode_media
from raytrain.models.loading import load_policy, load_processor
from raytrain.models.batching import token_type_ids
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
        self.processor = load_processor(cfg.model)
        # Left padding: every row of a batch ends where its generation starts.
        self.processor.tokenizer.padding_side = "left"
        frozen = cfg.model.model_copy(update={"lora": cfg.model.lora.model_copy(update={"enabled": False})})
        self.model = load_policy(frozen).to(self.device).eval()
        self._size = {"longest_edge": cfg.media.max_pixels, "shortest_edge": cfg.media.min_pixels}

    def _frames(self, request: JudgeRequest) -> np.ndarray | None:
        if request.path is None:
            return None
        return decode_media(request.path, request.media, self.cfg.media)

    @torch.no_grad()
    def grade(self, requests: list[JudgeRequest]) -> list[float]:
        """One score in [0, 1] per request (unparsable judge output scores 0). Media errors raise
        `raytrain.data.media.MediaError`; the caller counts them as judge failures."""
        inputs = self.encode(requests).to(self.device)
        tokenizer = self.processor.tokenizer
        out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.cfg.max_new_tokens,
                                  pad_token_id=tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [parse_judge_score(text) for text in decoded]

    def encode(self, requests: list[JudgeRequest]):
        """The left-padded model inputs of a batch of requests: chat prompt, media, generation prompt."""
        texts, images, videos = [], [], []
        for r in requests:
            frames = self._frames(r)
            content = [{"type": "text", "text": build_judge_prompt(r.question, r.response, self.cfg.prompt)}]
            if frames is not None:
                content.insert(0, {"type": r.media})
                if r.media == "video":
                    videos.append(frames)
                else:
                    images.append(frames[0])
            texts.append(self.processor.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True))
        inputs = self.processor(
            text=texts, images=images or None, videos=videos or None, padding=True, return_tensors="pt",
            images_kwargs={"size": self._size}, videos_kwargs={"do_sample_frames": False, "size": self._size},
        )
        if "mm_token_type_ids" not in inputs and hasattr(self.processor, "video_token_id"):
            # Qwen2.5-VL's M-RoPE needs the modality of every token.
            inputs["mm_token_type_ids"] = token_type_ids(inputs["input_ids"], self.processor.image_token_id,
                                                         self.processor.video_token_id)
        return inputs
