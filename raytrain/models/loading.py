"""Loading policies by name or path, LoRA wrapping, and the weights that travel to rollout engines."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from raytrain.config import LoraConfig, ModelConfig
from raytrain.weight_sync.protocol import Shape, tensor_spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_processor(cfg: ModelConfig):
    return AutoProcessor.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)


def model_class(config):
    """The auto class of a model config: vision-language (the detectors) or text-only (vLLM's CPU tests)."""
    return AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM


def load_policy(cfg: ModelConfig, *, weights: str | Path | None = None):
    """The policy model, with a fresh LoRA adapter when `cfg.lora.enabled`.

    `weights`, when given, is an exported checkpoint folder (`export_weights`):
    full safetensors weights, or an adapter for the base model `cfg.path`.
    """
    source = cfg.path
    if weights is not None and not (Path(weights) / "adapter_config.json").exists():
        source = str(weights)
    config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    model = model_class(config).from_pretrained(
        source, config=config, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, use_safetensors=True
    )
    if weights is not None and (Path(weights) / "adapter_config.json").exists():
        return PeftModel.from_pretrained(model, str(weights), is_trainable=cfg.lora.enabled)
    return wrap_lora(model, cfg.lora) if cfg.lora.enabled else model


def wrap_lora(model, lora: LoraConfig):
    """A fresh adapter on the language model's `lora.target_modules`; a vision tower stays frozen."""
    modules = "|".join(lora.target_modules)
    has_language_model = any(".language_model." in f".{name}." for name, _ in model.named_modules())
    target = rf".*language_model.*\.({modules})$" if has_language_model else rf".*\.({modules})$"
    return get_peft_model(
        model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target)
    )


def sync_state(model, gathered: dict[str, torch.Tensor] | None = None, *, cpu_copy: bool = True) -> dict[str, torch.Tensor]:
    """What a rollout engine needs to serve the current policy: the adapter alone under LoRA,
    every weight otherwise. CPU copies by default, so they can travel through the object store;
    `cpu_copy=False` leaves them where they are (a broadcast sends them from the GPU, bucket by bucket).
    `gathered`: the model's state dict when its own parameters are shards (ZeRO-3)."""
    if isinstance(model, PeftModel):
        state = get_peft_model_state_dict(model, state_dict=gathered)
    else:
        state = model.state_dict() if gathered is None else gathered
    return {k: v.detach().to("cpu", copy=True) if cpu_copy else v.detach() for k, v in state.items()}


def sync_spec(cfg: ModelConfig) -> dict[str, Shape]:
    """Names and shapes of `sync_state` for the model at `cfg.path`, without loading any weight
    (built on the meta device): what an engine that does not hold a transformers model accepts."""
    config = AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = model_class(config).from_config(config, trust_remote_code=cfg.trust_remote_code)
        if cfg.lora.enabled:
            model = wrap_lora(model, cfg.lora)
    state = get_peft_model_state_dict(model) if isinstance(model, PeftModel) else model.state_dict()
    return tensor_spec(state)


def apply_sync_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load all or part (one bucket) of a `sync_state`; names and shapes are checked by the caller
    (`raytrain.weight_sync.protocol`) before anything is loaded."""
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=False)


def merge_adapter(adapter: str | Path, out: str | Path, cfg: ModelConfig) -> Path:
    """The LoRA export `adapter` merged into its base model `cfg.path`, saved as a full Hugging Face folder."""
    merged = load_policy(cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": False})}), weights=adapter)
    return export_weights(merged.merge_and_unload(), load_processor(cfg), out)


def export_weights(model, processor, out: str | Path, gathered: dict[str, torch.Tensor] | None = None) -> Path:
    """An ordinary Hugging Face folder (safetensors): the adapter under LoRA, the full model otherwise.
    `gathered`: the model's state dict when its own parameters are shards (ZeRO-3)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=gathered, safe_serialization=True)
    processor.save_pretrained(out)
    return out
