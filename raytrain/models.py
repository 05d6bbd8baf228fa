"""Loading policies by name or path, LoRA wrapping, and the weights that travel to rollout engines."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForImageTextToText, AutoProcessor

from raytrain.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_processor(cfg: ModelConfig):
    return AutoProcessor.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)


def load_policy(cfg: ModelConfig, *, weights: str | Path | None = None):
    """The policy model, with a fresh LoRA adapter when `cfg.lora.enabled`.

    `weights`, when given, is an exported checkpoint folder (`export_weights`):
    full safetensors weights, or an adapter for the base model `cfg.path`.
    """
    source = cfg.path
    if weights is not None and not (Path(weights) / "adapter_config.json").exists():
        source = str(weights)
    model = AutoModelForImageTextToText.from_pretrained(
        source, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, use_safetensors=True
    )
    if weights is not None and (Path(weights) / "adapter_config.json").exists():
        return PeftModel.from_pretrained(model, str(weights), is_trainable=cfg.lora.enabled)
    if cfg.lora.enabled:
        lora = cfg.lora
        # Adapters go on the language model only; the vision tower stays frozen.
        target = rf".*language_model.*\.({'|'.join(lora.target_modules)})$"
        model = get_peft_model(
            model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target)
        )
    return model


def sync_state(model) -> dict[str, torch.Tensor]:
    """What a rollout engine needs to serve the current policy: the adapter alone under LoRA,
    every weight otherwise (CPU copies, so they can travel through the object store)."""
    state = get_peft_model_state_dict(model) if isinstance(model, PeftModel) else model.state_dict()
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_sync_state(model, state: dict[str, torch.Tensor]) -> None:
    """Apply `sync_state` output; any name or shape mismatch raises instead of silently doing nothing."""
    expected = sync_state(model) if isinstance(model, PeftModel) else model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            "weight sync does not match the engine's model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:5]]}"
        )
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=True)


def export_weights(model, processor, out: str | Path) -> Path:
    """An ordinary Hugging Face folder (safetensors): the adapter under LoRA, the full model otherwise."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
