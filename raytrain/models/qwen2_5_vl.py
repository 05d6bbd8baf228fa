"""Qwen2.5-VL, the family of BusterX++ (Wen et al. 2025) and of `Qwen/Qwen2.5-VL-7B-Instruct`; and the
text-only Qwen2 chat model the rollout benchmark also serves.

What is Qwen2.5-VL's own: the chat template's vision placeholders, the processor's patch grid
(`grid_thw`) and frame timing (`second_per_grid_t`), the token types its M-RoPE positions depend on
(`mm_token_type_ids`), pixels split by modality, the `<|im_end|>` turn end, adapters on the language
model only, and the vision tower run once per micro-batch for images and videos together.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from raytrain.data.batch import Prompt, TrainBatch, response_positions
from raytrain.models.family import ModelFamily, processor_size

_PIXELS = (("pixel_values", "image_grid_thw", "image"), ("pixel_values_videos", "video_grid_thw", "video"))


class Qwen2Text(ModelFamily):
    """A text-only Qwen2 chat model: no media, the Qwen chat template and turn end."""

    model_types = ("qwen2",)
    auto_class = AutoModelForCausalLM
    end_token = "<|im_end|>"
    # Qwen's vocabulary carries the vision tokens even without a tower: never sample them.
    vision_tokens = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


class Qwen2_5_VL(Qwen2Text):
    model_types = ("qwen2_5_vl",)
    auto_class = AutoModelForImageTextToText

    def __init__(self, processor):
        super().__init__(processor)
        self.image_token_id, self.video_token_id = processor.image_token_id, processor.video_token_id
        self.suppress_ids = sorted({*self.suppress_ids, self.image_token_id, self.video_token_id})

    @classmethod
    def lora_target(cls, modules: list[str]) -> str:
        """Adapters on the language model alone: the vision tower stays frozen."""
        return rf".*language_model.*\.({'|'.join(modules)})$"

    # -- prompts ----------------------------------------------------------------------------------

    def encode_prompt(self, text: str, frames: np.ndarray, is_video: bool, budget, duration_s: float | None) -> dict:
        size = processor_size(budget)
        if is_video:
            out = self.processor(text=[text], videos=[frames], return_tensors="np",
                                 videos_kwargs={"do_sample_frames": False, "size": size, "cap_pixels_per_frame": True})
            pixel_values, grid = out["pixel_values_videos"], out["video_grid_thw"][0]
        else:
            out = self.processor(text=[text], images=[frames[0]], return_tensors="np", images_kwargs={"size": size})
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"][0]
        second_per_grid_t = 1.0
        if is_video and duration_s:
            # Real time between temporal patches, so M-RoPE spaces frames as the clip does.
            second_per_grid_t = self.processor.video_processor.temporal_patch_size * duration_s / len(frames)
        return {
            "input_ids": out["input_ids"][0].astype(np.int64),
            "pixel_values": pixel_values.astype(np.float32),
            "grid_thw": np.asarray(grid, dtype=np.int64),
            "second_per_grid_t": float(second_per_grid_t),
        }

    def padding_batch(self) -> TrainBatch:
        """A prompt with the smallest black image, so the vision tower runs too (ZeRO-3 gathers parameters
        module by module)."""
        out = self.processor(text=[self.chat_text("", "image")], images=[np.zeros((28, 28, 3), np.uint8)], return_tensors="np")
        prompt = Prompt(key="", id="padding", path="", label="", category="", input_ids=out["input_ids"][0].astype(np.int64),
                        pixel_values=out["pixel_values"].astype(np.float32), grid_thw=out["image_grid_thw"][0].astype(np.int64),
                        is_video=False)
        response = [self.end_id]
        zeros = torch.zeros(response_positions([prompt], [response]).shape)
        return TrainBatch([prompt], [response], {"old_logprobs": zeros, "advantages": zeros, "loss_mask": zeros})

    # -- model inputs -----------------------------------------------------------------------------

    def token_types(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`mm_token_type_ids` (0 text, 1 image, 2 video): M-RoPE positions depend on it."""
        return (input_ids == self.image_token_id).long() + 2 * (input_ids == self.video_token_id).long()

    @staticmethod
    def vision_inputs(prompts: list[Prompt]) -> dict[str, torch.Tensor]:
        """The pixels of a batch concatenated in sequence order, split by modality (none for text prompts)."""
        out: dict[str, torch.Tensor] = {}
        for is_video, pv_key, grid_key in ((False, "pixel_values", "image_grid_thw"), (True, "pixel_values_videos", "video_grid_thw")):
            chosen = [p for p in prompts if p.is_video == is_video and p.pixel_values.size]
            if chosen:
                out[pv_key] = torch.from_numpy(np.concatenate([p.pixel_values for p in chosen])).float()
                out[grid_key] = torch.from_numpy(np.stack([p.grid_thw for p in chosen])).long()
        videos = [p for p in prompts if p.is_video]
        if videos:
            out["second_per_grid_ts"] = torch.tensor([p.second_per_grid_t for p in videos])
        return out

    def collate(self, prompts: list[Prompt], responses: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = super().collate(prompts, responses)
        batch["mm_token_type_ids"] = self.token_types(batch["input_ids"])
        batch.update(self.vision_inputs(prompts))
        return batch

    def generation_inputs(self, prompt: Prompt) -> dict[str, torch.Tensor]:
        inputs = {**super().generation_inputs(prompt), **self.vision_inputs([prompt])}
        inputs["mm_token_type_ids"] = self.token_types(inputs["input_ids"])
        return inputs

    def encode_media(self, model, batch: dict[str, torch.Tensor]) -> dict:
        """The batch's images and videos through the vision tower in one call, as the `mm_encoder_outputs`
        Qwen2.5-VL's forward accepts in place of pixels (the tower encodes both alike, each item apart).

        Its own forward calls the tower once per modality present, so ranks whose batches mix images and
        videos differently would run different modules: under ZeRO-3, whose parameter gathers are
        collectives issued module by module, that deadlocks. One call keeps every rank in step."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        present = [(pv, grid, modality) for pv, grid, modality in _PIXELS if pv in batch]
        features = model.get_image_features(torch.cat([batch[pv] for pv, _, _ in present]),
                                            torch.cat([batch[grid] for _, grid, _ in present]), return_dict=True).pooler_output
        encoded, start = {}, 0
        for _, grid, modality in present:
            count = len(batch[grid])
            encoded[modality] = BaseModelOutputWithPooling(pooler_output=features[start:start + count])
            start += count
        return encoded

    def logits(self, model, batch: dict[str, torch.Tensor], keep: int = 0) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("response_mask", *(pv for pv, _, _ in _PIXELS))}
        if any(pv in batch for pv, _, _ in _PIXELS):
            inputs["mm_encoder_outputs"] = self.encode_media(model, batch)
        return model(**inputs, use_cache=False, logits_to_keep=keep).logits

    def vllm_input(self, prompt: Prompt) -> dict:
        """The prompt's tokens (its expanded placeholder run collapsed to one: vLLM expands it again) and
        its media as the pipeline decoded them: the frames are recovered from the prompt's own pixels
        (`prompt_frames`), never decoded again, so vLLM's processor sees exactly what the trainer's did.
        A video carries metadata whose fps makes vLLM's `second_per_grid_ts` the trainer's
        (`temporal_patch_size / sampled_fps`, with every frame sampled), so the M-RoPE positions agree."""
        if prompt.pixel_values.size == 0:
            return super().vllm_input(prompt)
        pad = self.video_token_id if prompt.is_video else self.image_token_id
        ids = [int(t) for i, t in enumerate(prompt.input_ids) if t != pad or i == 0 or prompt.input_ids[i - 1] != pad]
        frames = self.prompt_frames(prompt)
        height, width = frames.shape[1:3]
        # The frames are already at the pipeline's size: the processor's resize must leave them so.
        kwargs = {"size": {"shortest_edge": height * width, "longest_edge": height * width}}
        if not prompt.is_video:
            return {"prompt_token_ids": ids, "multi_modal_data": {"image": frames[0]}, "mm_processor_kwargs": kwargs}
        n = len(frames)
        metadata = {"total_num_frames": n, "frames_indices": list(range(n)), "do_sample_frames": False,
                    "fps": self.processor.video_processor.temporal_patch_size / prompt.second_per_grid_t,
                    "duration": n * prompt.second_per_grid_t / self.processor.video_processor.temporal_patch_size,
                    "width": width, "height": height}
        return {"prompt_token_ids": ids, "multi_modal_data": {"video": (frames, metadata)},
                "mm_processor_kwargs": {**kwargs, "do_sample_frames": False, "cap_pixels_per_frame": True}}

    def prompt_frames(self, prompt: Prompt) -> np.ndarray:
        """uint8 frames [T, H, W, 3] whose processing gives `prompt.pixel_values` again: the processor's
        patch layout and normalisation undone (float32 round-off is far below one grey level, so the
        frames are exact). An image comes back as its frame repeated `temporal_patch_size` times, a video
        with the frame the processor appended to an odd count."""
        proc = self.processor.video_processor if prompt.is_video else self.processor.image_processor
        t, h, w = (int(x) for x in prompt.grid_thw)
        tps, patch, merge = proc.temporal_patch_size, proc.patch_size, proc.merge_size
        x = prompt.pixel_values.reshape(t, h // merge, w // merge, merge, merge, 3, tps, patch, patch)
        x = x.transpose(0, 6, 1, 3, 7, 2, 4, 8, 5)  # -> [t, tps, h/m, m, p, w/m, m, p, C]
        x = x.reshape(t * tps, h * patch, w * patch, 3)
        x = (x * np.asarray(proc.image_std, np.float32) + np.asarray(proc.image_mean, np.float32)) / proc.rescale_factor
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def processor_inputs(self, texts: list[str], images: list, videos: list, budget):
        inputs = super().processor_inputs(texts, images, videos, budget)
        if "mm_token_type_ids" not in inputs:
            inputs["mm_token_type_ids"] = self.token_types(inputs["input_ids"])
        return inputs
