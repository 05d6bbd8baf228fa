"""Loading a checkpoint by name or path: its model family, processor and policy (with LoRA), and the
weights that travel to rollout engines or into an export."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor

from raytrain.config.sections import ModelConfig
from raytrain.models.dx_llava import DxLlava
from raytrain.models.family import ModelFamily
from raytrain.models.qwen2_5_vl import Qwen2_5_VL, Qwen2Text
from raytrain.weight_sync.protocol import Shape, tensor_spec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Every model family, by the `model_type` of the checkpoints it serves.
FAMILIES: dict[str, type[ModelFamily]] = {t: family for family in (Qwen2_5_VL, Qwen2Text, DxLlava) for t in family.model_types}


def _is_adapter(model) -> bool:
    """Whether `model` is a peft model. peft is imported only where an adapter is made or loaded (its import
    costs ~6 s of CPU in each of a run's processes): a process that never imported it holds no peft model."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def family_class(config) -> type[ModelFamily]:
    """The family of a transformers model config, by its `model_type`."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"model type {model_type!r} has no model family here (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[model_type]


def load_processor(cfg: ModelConfig):
    return AutoProcessor.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)


def load_family(cfg: ModelConfig) -> ModelFamily:
    """The model family of the checkpoint at `cfg.path`, holding its processor."""
    config = AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    family = family_class(config)(load_processor(cfg))
    family.augment_head = family.has_head and cfg.head_augment
    return family


def without_lora(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with LoRA off: the base model alone (a frozen reference, a judge, a merge's base)."""
    return cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"enabled": False})})


def load_policy(cfg: ModelConfig, *, weights: str | Path | None = None):
    """The policy model, with a fresh LoRA adapter when `cfg.lora.enabled`, and only `trainable_modules`
    trainable.

    `weights`, when given, is an exported checkpoint folder (`export_weights`):
    full safetensors weights, or an adapter for the base model `cfg.path`.
    """
    source = cfg.path
    if weights is not None and not (Path(weights) / "adapter_config.json").exists():
        source = str(weights)
    config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    model = family_class(config).auto_class.from_pretrained(
        source, config=config, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code,
        use_safetensors=None if cfg.allow_pickle else True,
        **_quantized(cfg),
    )
    if cfg.lora.enabled and cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        # Norms and the output layer in float32, inputs that carry gradients into the adapters.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if weights is not None and (Path(weights) / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(weights), is_trainable=cfg.lora.enabled)
    if cfg.lora.enabled:
        return wrap_lora(model, cfg)
    freeze(model, trainable_modules(model, cfg))
    return model


def _quantized(cfg: ModelConfig) -> dict:
    """`from_pretrained` arguments of a QLoRA base (`model.quantization`): bitsandbytes loads the frozen
    weights in 4-bit NF4 or 8-bit, on this process's GPU where it has one. Only under LoRA: a base
    loaded without an adapter (reference model, merge, evaluation) stays in full precision."""
    if cfg.quantization == "none" or not cfg.lora.enabled:
        return {}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(f"model.quantization {cfg.quantization} needs bitsandbytes: pip install -e '.[qlora]'") from None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=DTYPES[cfg.dtype])
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else None
    return {"quantization_config": quant, "device_map": device_map}


def trainable_modules(model, cfg: ModelConfig) -> list[str] | None:
    """The top-level submodules that train: `model.trainable`, else the family's default (None: all)."""
    family = family_class(model.config)
    modules = cfg.trainable if cfg.trainable is not None else family.default_trainable
    if modules is None:
        return None
    children = dict(model.named_children())
    for name in modules:
        if name not in children:
            raise ValueError(f"model.trainable: {name!r} is no top-level submodule of the model "
                             f"(it has: {', '.join(children)})")
        if name in family.frozen_modules:
            raise ValueError(f"model.trainable: {name!r} stays frozen in the {family.__name__} family")
    return list(modules)


def freeze(model, modules: list[str] | None) -> None:
    """Only `modules` (top-level names; None: every one but the family's frozen ones) keep gradients."""
    frozen = family_class(model.config).frozen_modules
    for name, child in model.named_children():
        child.requires_grad_((modules is None or name in modules) and name not in frozen)


def wrap_lora(model, cfg: ModelConfig):
    """A fresh adapter on `cfg.lora.target_modules` where the model's family puts adapters (the language
    model; Qwen2.5-VL's and DX-LLaVA's vision towers stay frozen); the other `trainable_modules` (DX-LLaVA's
    projector and head) train whole beside it."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = cfg.lora
    target = family_class(model.config).lora_target(lora.target_modules)
    whole = [m for m in trainable_modules(model, cfg) or () if m != "language_model"]
    return get_peft_model(
        model, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target,
                              modules_to_save=_children(model, whole) or None)
    )


def _children(model, modules: list[str]) -> list[str]:
    """peft picks `modules_to_save` by name suffix, so `head` would also catch the LM's `lm_head` and the
    tower's own `head`: name the top-level modules' children instead (`head.fc1`, `projector.0`), which no
    other module's name ends with."""
    names = []
    for name in modules:
        children = [f"{name}.{child}" for child, sub in model.get_submodule(name).named_children()
                    if any(True for _ in sub.parameters())]
        names += children or [name]
    return names


def sync_state(model, gathered: dict[str, torch.Tensor] | None = None, *, cpu_copy: bool = True) -> dict[str, torch.Tensor]:
    """What a rollout engine needs to serve the current policy: the adapter alone under LoRA,
    every weight otherwise. CPU copies by default, so they can travel through the object store;
    `cpu_copy=False` leaves them where they are (a broadcast sends them from the GPU, bucket by bucket).
    `gathered`: the model's state dict when its own parameters are shards (ZeRO-3)."""
    if _is_adapter(model):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model, state_dict=gathered)
    else:
        state = model.state_dict() if gathered is None else gathered
    state = synced(model, state)
    return {k: v.detach().to("cpu", copy=True) if cpu_copy else v.detach() for k, v in state.items()}


def synced(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without the family's frozen modules (DX-LLaVA's tower): engines hold their own copy."""
    frozen = tuple(f"{m}." for m in family_class(model.config).frozen_modules)
    return {k: v for k, v in state.items() if not k.startswith(frozen)} if frozen else state


def sync_spec(cfg: ModelConfig) -> dict[str, Shape]:
    """Names and shapes of `sync_state` for the model at `cfg.path`, without loading any weight
    (built on the meta device): what an engine that does not hold a transformers model accepts."""
    config = AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        model = family_class(config).auto_class.from_config(config, trust_remote_code=cfg.trust_remote_code)
        if cfg.lora.enabled:
            model = wrap_lora(model, cfg)
    return tensor_spec(sync_state(model, cpu_copy=False))


def apply_sync_state(model, state: dict[str, torch.Tensor]) -> None:
    """Load all or part (one bucket) of a `sync_state`; names and shapes are checked by the caller
    (`raytrain.weight_sync.protocol`) before anything is loaded."""
    if _is_adapter(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=False)


def merge_adapter(adapter: str | Path, out: str | Path, cfg: ModelConfig) -> Path:
    """The LoRA export `adapter` merged into its base model `cfg.path`, saved as a full Hugging Face folder."""
    merged = load_policy(without_lora(cfg), weights=adapter)
    return export_weights(merged.merge_and_unload(), load_processor(cfg), out)


def export_weights(model, processor, out: str | Path, gathered: dict[str, torch.Tensor] | None = None) -> Path:
    """An ordinary Hugging Face folder (safetensors): the adapter under LoRA, the full model otherwise.
    `gathered`: the model's state dict when its own parameters are shards (ZeRO-3)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=gathered, safe_serialization=True)
    processor.save_pretrained(out)
    return out
