"""CLIP-style dual encoder for PRPO's visual-consistency reward (SPEC section 5).

The official PRPO encoder is OpenCLIP ConvNeXt-L-D-320 (`kind: open_clip`, by model
name and pretrained tag); any transformers `CLIPModel` folder works with
`kind: transformers` (tests use `raytrain.models.tiny.save_tiny_clip`). Embeddings are
L2-normalised; a video is the normalised mean of its frames' embeddings, computed
once per prompt and shared by its G responses.
"""

from __future__ import annotations

import numpy as np
import torch


class ClipEncoder:
    def __init__(self, path: str, *, kind: str = "transformers", pretrained: str | None = None,
                 dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False):
        # Here, not at the top: the reward actor imports this module even when no paragraph reward needs an
        # encoder, and the model-loading stack costs its process seconds of start-up.
        from raytrain.models.loading import DTYPES

        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.kind = kind
        if kind == "transformers":
            from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

            self.model = CLIPModel.from_pretrained(path, dtype=self.dtype, use_safetensors=True,
                                                   trust_remote_code=trust_remote_code)
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.max_text_tokens = self.model.config.text_config.max_position_embeddings
        elif kind == "open_clip":
            try:
                import open_clip
            except ImportError as e:
                raise ImportError("paragraph.encoder_kind open_clip needs `pip install open_clip_torch`") from e
            self.model, _, self.image_processor = open_clip.create_model_and_transforms(path, pretrained=pretrained)
            self.tokenizer = open_clip.get_tokenizer(path)
            self.model = self.model.to(self.dtype)
        else:
            raise ValueError(f"encoder kind must be 'transformers' or 'open_clip', got {kind!r}")
        self.model = self.model.to(self.device).eval()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), d] normalised text embeddings."""
        if self.kind == "open_clip":
            features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        else:
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt")
            features = self.model.get_text_features(**enc.to(self.device)).pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_frames(self, frames: np.ndarray) -> torch.Tensor:
        """[d] normalised mean of the normalised embeddings of uint8 frames ``[T, H, W, 3]``."""
        if self.kind == "open_clip":
            from PIL import Image

            pixels = torch.stack([self.image_processor(Image.fromarray(f)) for f in frames])
            features = self.model.encode_image(pixels.to(self.device, self.dtype))
        else:
            pixels = self.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
            features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)).pooler_output
        per_frame = torch.nn.functional.normalize(features.float(), dim=-1)
        return torch.nn.functional.normalize(per_frame.mean(0), dim=-1).cpu()
