"""The config sections: one typed, documented model per part of a run (`raytrain.config.Config` holds them).

Every option is declared once here with its default and, where it comes from a paper, the citation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from rewards.judge_prompt import JUDGE_PROMPT
from rewards.outcome import COMPONENTS as REWARD_COMPONENTS


class Strict(BaseModel):
    """Unknown keys and wrong types fail, also on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Ray's own resource names: each has its option (`train.cpus_per_worker`, `rollout.num_gpus`, ...), and Ray
# accounts memory apart; a custom resource is any other name a node was started with (`ray start --resources`).
RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    builtin = sorted(set(value) & set(RAY_BUILTIN_RESOURCES))
    if builtin:
        raise ValueError(f"{', '.join(builtin)} have options of their own (CPUs and GPUs per worker or actor); "
                         "name only custom resources here")
    bad = {k: v for k, v in value.items() if not k or v <= 0}
    if bad:
        raise ValueError(f"custom resources need a name and an amount above 0, got {bad}")
    return value


# Extra custom Ray resources one worker or actor asks for, beside its CPUs and GPUs.
CustomResources = Annotated[dict[str, float], AfterValidator(_custom_resources)]

PINNING = ("A node offers a custom resource when started with it (`ray start --resources='{\"trainer\": 1}'`); "
           "asking for it pins the role to such nodes, and an amount equal to what each node has puts one per node. "
           "A name no live node has is refused at start. Default: none.")


class TrackingConfig(Strict):
    """Where the experiment trackers of `run.loggers` write (`raytrain.observe.trackers`)."""

    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (`http://host:5000`, `databricks`, ...); null: a local file store in "
                          "`run.output_dir/mlruns` (`mlflow ui --backend-store-uri` that folder).",
    )
    mlflow_experiment: str = Field("deepfake-rl", description="MLflow experiment the run is logged under (created when missing).")
    wandb_project: str = Field("deepfake-rl", description="Weights & Biases project.")
    wandb_entity: str | None = Field(None, description="Weights & Biases team or user; null: the account's default.")
    wandb_mode: Literal["online", "offline"] | None = Field(
        None, description="null: `online` when an account is configured (WANDB_API_KEY, or WANDB_MODE in the environment), "
                          "else `offline` (the run is kept in `run.output_dir/wandb/`; `wandb sync` uploads it later).",
    )


class RunConfig(Strict):
    name: str = Field("run", description="Run name; checkpoints and metrics go to `output_dir`. Also the `run` tag of the "
                                         "run's Ray metrics and its name in the experiment trackers.")
    output_dir: Path = Field(Path("runs/run"), description="Where checkpoints, metrics and reports are written. Re-running with the same directory resumes.")
    seed: int = Field(0, description="Seed for data order and initialisation (rollout sampling: `rollout.sampling.seed`).")
    loggers: list[Literal["jsonl", "tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="Where training rank 0 logs each step's scalars, under the names of `metrics.jsonl`: `jsonl` "
                    "(`run.output_dir/metrics.jsonl`, always written: the curves and a resume read it), `tensorboard` "
                    "(`run.output_dir/tensorboard/`), `mlflow`, `wandb` (see `run.tracking`). The trackers also get "
                    "the resolved config as parameters; a resumed run continues the same tracker run. A tracker that "
                    "cannot write is reported once and dropped; the run goes on.",
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    console: Literal["auto", "bar", "lines"] = Field(
        "auto", description="Progress of training steps and evaluation batches: `bar` (tqdm; a training worker's bar is drawn "
                            "by the driver), `lines` (a plain line per step, and per evaluation batch at most every 30 s), "
                            "`auto`: `bar` when the driver's stdout is a terminal.",
    )
    ray_progress_bars: bool = Field(False, description="Show Ray Data's own streaming progress bars (its `DataContext` settings); "
                                                        "off, they redraw between the training lines.")


class LoraConfig(Strict):
    """LoRA (Hu et al. 2021, arXiv 2106.09685). BusterX++ trains r=16, alpha=32."""

    enabled: bool = Field(False, description="Train a LoRA adapter instead of all weights.")
    r: int = Field(16, gt=0, description="Adapter rank.")
    alpha: int = Field(32, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names (language model) that receive adapters.",
    )
    export_merged: bool = Field(
        False, description="Also write `run.output_dir/final-merged/`: the adapter merged into the base weights, an ordinary "
                           "Hugging Face model (safetensors) that loads and serves without peft.",
    )


class ModelConfig(Strict):
    path: str = Field(..., description="Hugging Face folder or hub name, e.g. `Qwen/Qwen2.5-VL-7B-Instruct`.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="Weight dtype; use float32 on CPU.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a checkpoint. Off unless you trust it.")
    allow_pickle: bool = Field(
        False, description="Load weights from pickled files (`pytorch_model.bin`, `.pt`): unpickling runs whatever code "
                           "the file holds, so by default only safetensors load and a folder without them is refused at start.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory in the trainer.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    trainable: list[str] | None = Field(
        None,
        description="Top-level submodules of the model that train; the rest stay frozen. null: the model family's "
                    "default (every weight for Qwen2.5-VL; `[projector, head, language_model]` for DX-LLaVA). DX-LLaVA "
                    "(SPEC section 7, the official code): `[projector, head]` for stage 1 feature alignment, "
                    "`[projector, head, language_model]` for stage 2, `[language_model]` for PRPO; its vision tower is "
                    "always frozen. Under LoRA, `language_model` gets the adapters and the others train whole.",
    )
    head_loss_weight: float = Field(
        10.0, ge=0,
        description="Weight of the binary head's BCE-with-logits beside the LM loss in SFT (families with a head: "
                    "DX-LLaVA; the official DX-LLaVA trains LM + 10 x BCE).",
    )
    head_augment: bool = Field(
        True,
        description="The binary head trains on its own augmented view of the image (the official pipeline: "
                    "RandomResizedCrop, flip, ColorJitter, rotation, grayscale, blur); off: on the generation view. "
                    "The tiny CPU recipe turns it off: its random frozen tower cannot see the synthetic cues through "
                    "crop, rotation and blur, and the head's loss then drags the shared projector too (measured on "
                    "96 images: held-out F1 0.74 with it, 0.98 without; head accuracy 0.77 and 0.88).",
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="QLoRA (Dettmers et al. 2023, arXiv 2305.14314): with `lora.enabled`, the frozen base weights of the "
                    "policy (trainer and transformers rollout engines) are loaded by bitsandbytes in 4-bit NF4 (double "
                    "quantization, compute in `dtype`) or 8-bit (LLM.int8()); only the adapter trains. `pip install -e .[qlora]`. "
                    "ZeRO-2 only. Merged exports, evaluation and vLLM engines use the full-precision base with the adapter.",
    )

    @model_validator(mode="after")
    def _quantized_lora(self):
        if self.quantization != "none" and not self.lora.enabled:
            raise ValueError(f"quantization {self.quantization} trains a LoRA adapter over frozen quantized weights: set lora.enabled")
        return self


class MediaConfig(Strict):
    """How a media file becomes frames: the frame sampling policy and the per-frame pixel budget (SPEC section 2).

    The training and evaluation data (`data`), the thinking judge (`reward.judge.media`) and the PRPO
    encoder (`reward.paragraph.media`) each decode with their own budget of this shape.
    """

    num_frames: int = Field(16, gt=0, description="Frames sampled uniformly per video (BusterX++: 16) when `sample_fps` is null; an image is one frame.")
    sample_fps: float | None = Field(
        None, gt=0,
        description="Frame sampling policy. null (default): `num_frames` uniform frames per video. A number: that many "
                    "frames per second of the clip (BusterX++ sampled at 4 fps), uniform over the clip, clamped to "
                    "[`min_frames`, `max_frames`]; a clip of unknown fps gets `num_frames`.",
    )
    min_frames: int = Field(4, gt=0, description="Fewest frames per video under `sample_fps` (short clips repeat frames).")
    max_frames: int = Field(32, gt=0, description="Most frames per video under `sample_fps`: bounds visual tokens of long clips.")
    max_pixels: int = Field(448 * 448, gt=0, description="Per-frame pixel cap (frames are resized, never cropped): bounds visual tokens of a 1080p clip.")
    min_pixels: int = Field(28 * 28, gt=0, description="Per-frame pixel floor.")

    @model_validator(mode="after")
    def _frame_range(self):
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) exceeds max_frames ({self.max_frames})")
        return self


class JudgeMediaConfig(MediaConfig):
    num_frames: int = Field(4, gt=0, description="Frames of a video the thinking judge sees (an image is one frame).")


class EncoderMediaConfig(MediaConfig):
    num_frames: int = Field(8, gt=0, description="Frames of a video the PRPO encoder embeds (the mean of their embeddings).")


class DataConfig(MediaConfig):
    """The training and evaluation data: a manifest, its splits, the prompt, and (from `MediaConfig`) how its media are decoded."""

    manifest: Path = Field(..., description="Parquet manifest (see `raytrain.data.manifest`).")
    train_split: str = Field("train", description="Manifest split used for training.")
    eval_split: str = Field("test", description="Manifest split used for held-out evaluation.")
    prompt: str = Field(
        "Is this {media} real or fake? Think inside <think></think>, then answer real or fake inside <answer></answer>.",
        description="User prompt; `{media}` becomes `video` or `image`.",
    )
    mode: Literal["think", "no_think", "random"] | None = Field(
        None, description="Mode flag appended to the user prompt (`/think` or `/no_think`, BusterX++ hybrid reasoning, SPEC section 2); "
                          "`random`: each prompt one or the other, seeded by its data key (BusterX++ stage 3); none by default. "
                          "A manifest row's own `mode` takes precedence.",
    )
    answer_format: Literal["word", "letter", "heading"] = Field(
        "word",
        description="How a response states its verdict, for the rewards, the evaluation and the SFT targets. `word`: "
                    "`<think>...</think><answer>real|fake</answer>`; `letter`: the BusterX++ `\\boxed{A|B}` form in the "
                    "answer tag; `heading`: DX-LLaVA's (official PRPO code), paragraphs of reasoning ending in "
                    "`### Answer: real|fake`, no tags.",
    )
    epochs: int = Field(1, gt=0, description="Passes over the training split (each reshuffled).")
    decode_concurrency: int = Field(2, gt=0, description="Parallel Ray Data decode tasks.")
    preserve_order: bool = Field(
        False,
        description="Training workers get their prompts in row order (Ray Data's `preserve_order`), not as decode "
                    "tasks finish: with one training worker and `rollout.sampling.seed` a run is reproducible step "
                    "for step. Off by default: a slow file then holds up the ones after it.",
    )
    max_rows: int | None = Field(None, gt=0, description="Use only the first N rows of each split (quick tests).")



class SamplingConfig(Strict):
    group_size: int = Field(8, gt=0, description="G: responses sampled per prompt (DAPO: 8; 4 fits one 40 GB GPU).")
    temperature: float = Field(1.0, gt=0, description="Rollout temperature (DAPO: 1.0).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (PRPO: 0.7).")
    max_new_tokens: int = Field(768, gt=0, description="Response length limit; a response hitting it is truncated.")
    seed: int | None = Field(
        None,
        description="Seeds each prompt's G samples from (this seed, the prompt's data key, the policy version), so a "
                    "run samples the same responses whichever engine, call order or async schedule serves them: "
                    "the same run twice gives the same losses. None (default): unseeded, as vLLM's batched sampler "
                    "is fastest without per-request seeds.",
    )


class VLLMConfig(Strict):
    """The vLLM rollout engine (`rollout.engine: vllm`; `pip install -e .[vllm]`)."""

    mode: Literal["separate", "colocated"] = Field(
        "separate",
        description="`separate`: engines hold their own GPUs. `colocated`: each engine shares a GPU with a "
                    "training worker (it takes `rollout.num_gpus` of it, the worker the rest) and sleeps "
                    "(weights offloaded, KV cache freed) except while generating or receiving weights. GPUs only.",
    )
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one engine shards the model over (set `rollout.num_gpus` to match).")
    max_model_len: int = Field(8192, gt=0, description="Longest prompt + response in tokens; bounds the KV cache per sequence.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Fraction of GPU memory vLLM may take (weights + KV cache); lower it when colocated."
    )
    cpu_kvcache_gb: int = Field(1, gt=0, description="KV cache in GiB on CPU (VLLM_CPU_KVCACHE_SPACE); CPU builds only.")
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start, slower decode).")
    seed: int = Field(0, description="Seed of the engine's sampler.")


class RolloutConfig(Strict):
    engine: Literal["transformers", "vllm"] = Field("transformers", description="Generation backend: transformers `generate`, or vLLM (see `rollout.vllm`).")
    colocate: bool = Field(
        False,
        description="Colocated transformers rollouts, for small setups (TRL's and verl's hybrid-engine way): each "
                    "training worker generates its own prompts' G responses with its own live module, so no rollout "
                    "actors start (the `num_actors`, `num_cpus`, `num_gpus`, `torch_threads` and weight-sync options "
                    "below do not apply), no second copy of the policy is held and no weights are sent (0 bytes "
                    "synced). Needs `engine: transformers` and `train.zero_stage` 0 or 2 (the module must be whole on "
                    "every rank). Off by default: generation and training then take turns on the same worker and "
                    "its thread budget, and generation cannot use vLLM; separate rollout actors are the way to "
                    "scale. It pays where the weight sync and the second copy cost more than the generation itself "
                    "(tiny models, one GPU per worker with memory to spare).",
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="`sync`: each step a rank generates its groups, then trains on them, then the new weights are sent. "
                    "`async`: generation overlaps training with bounded staleness (k = `algorithm.max_staleness`): before "
                    "it trains a step, each rank submits the first generation round of each of its next k steps, so its "
                    "rollout actor generates them with the newest weights it has while the trainers update (k = 1 is "
                    "verl's one-step-off policy); later dynamic-sampling rounds are generated when needed, with the "
                    "current weights. Every sample records the version that generated it; the loss's importance ratio "
                    "uses the behaviour policy's recorded log-probabilities; a sync stages the weights while the actor "
                    "generates and swaps them in between generate calls (a sync waits at most for the call in "
                    "progress, and the engine holds a second copy of the synced tensors meanwhile). Prompts in flight "
                    "are not consumed at a checkpoint: a resume draws them again. k = 0 is `sync` exactly. Needs "
                    "separate rollout actors (not `colocate`); with `engine: vllm`, `vllm.mode: separate` and weights "
                    "through the object store (`weight_transport` `auto` or `object_store`: the engine's process "
                    "stages them and swaps them into vLLM between generate calls).",
    )
    num_actors: int = Field(1, gt=0, description="Rollout actors, one shared pool: each rank sends each generate call to the actor "
                                                  "running the fewest of its calls (any number, independent of `train.num_workers`).")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per rollout actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs per rollout actor (0 on CPU).")
    torch_threads: int = Field(1, gt=0, description="Intra-op threads of a rollout actor on CPU.")
    resources: CustomResources = Field(
        default_factory=dict,
        description="Custom Ray resources each rollout actor asks for beside `num_cpus` and `num_gpus` (also the "
                    "evaluation's inference actors, which are rollout engines). The reward actor and the judges are "
                    "roles of their own (`reward.resources`, `reward.judge.resources`): they do not take a rollout "
                    "node's share. " + PINNING,
    )
    prompts_per_call: int = Field(
        1, gt=0,
        description="Prompts a training worker sends per generate call (each with its G samples). A call's groups are "
                    "scored while the next call generates, so 1 overlaps scoring most; vLLM batches across a call's "
                    "prompts, so with `engine: vllm` set it to `train.prompts_per_worker` or more.",
    )
    weight_bucket_mb: int = Field(256, gt=0, description="Size bound of one weight-sync bucket (MiB): a sync is one call per bucket, not per tensor.")
    weight_transport: Literal["auto", "object_store", "broadcast"] = Field(
        "auto",
        description="How full weights reach the engines. `object_store`: each bucket is put in Ray's object store "
                    "and pulled by every actor. `broadcast`: training rank 0 and the engines' processes form a "
                    "process group of their own and each bucket is one broadcast (NCCL GPU to GPU with "
                    "`train.use_gpu`, gloo on CPU). `auto`: broadcast on GPUs when every engine has its own GPUs "
                    "(not colocated) and full weights are synced, except to vLLM under `mode: async`; the object store "
                    "otherwise. LoRA adapters (megabytes) always travel through the object store.",
    )
    weight_group_timeout_s: float = Field(
        300.0, gt=0, description="Seconds the weight group waits for a member (rendezvous, one broadcast) before failing."
    )
    python: str | None = Field(
        None,
        description="Python interpreter the rollout actors run in (Ray's per-actor runtime_env `py_executable`); "
                    "default: the driver's. For an environment of vLLM's own beside the trainer's, as on CPU, where "
                    "vllm-cpu needs another torch: `.venv-vllm/bin/python` (both environments must have the same Ray "
                    "and Python versions, and the project installed).",
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)


class JudgeConfig(Strict):
    """The thinking judge of BusterX++ stage 3: a vision-language model grading the reasoning (SPEC section 3).

    Reference: SophiaVL-R1-Thinking-Reward-Model-3B (a Qwen2.5-VL-3B fine-tune, arXiv 2505.17018).
    Loaded only when `reward.weights.thinking` is non-zero.
    """

    model: ModelConfig | None = Field(None, description="Judge model (any image-text-to-text folder or hub name); required when the thinking weight is non-zero.")
    prompt: str = Field(
        JUDGE_PROMPT,
        description="Judge prompt with `{question}` and `{response}` placeholders (default: the SophiaVL-R1 criteria); "
        "the media go beside it.",
    )
    media: JudgeMediaConfig = Field(default_factory=JudgeMediaConfig, description="How the judge decodes the prompt's media.")
    max_new_tokens: int = Field(32, gt=0, description="Greedy tokens the judge may write (its answer is `<answer>S</answer>`).")
    batch_size: int = Field(8, gt=0, description="Requests per judge call (and per generate batch).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one judge batch; on timeout its responses score 0, counted as judge failures.")
    num_actors: int = Field(1, gt=0, description="Judge actors; batches are spread over them.")
    num_cpus: float = Field(1, gt=0, description="CPUs per judge actor.")
    num_gpus: float = Field(0, ge=0, description="GPUs per judge actor (0 on CPU).")
    torch_threads: int = Field(1, gt=0, description="Intra-op threads of a judge actor on CPU.")
    resources: CustomResources = Field(default_factory=dict, description="Custom Ray resources each judge actor asks for. " + PINNING)


class ParagraphConfig(Strict):
    """PRPO paragraph rewards r_k = alpha * VCR_k + beta * PCR_k (Nguyen et al. 2025; SPEC section 5).

    The encoder is loaded only when `reward.weights.paragraph` is non-zero; without one, r_k = PCR_k.
    """

    encoder: str | None = Field(None, description="CLIP-style dual encoder: a transformers CLIP folder/hub name, or an OpenCLIP model name (PRPO: `convnext_large_d_320`).")
    encoder_kind: Literal["transformers", "open_clip"] = Field("transformers", description="Loader of `encoder`.")
    encoder_pretrained: str | None = Field(None, description="OpenCLIP pretrained tag (PRPO: `laion2b_s29b_b131k_ft_soup`); unused for transformers.")
    encoder_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Encoder weight dtype.")
    num_gpus: float = Field(0, ge=0, description="GPUs reserved for the reward actor, which runs the encoder (0: CPU).")
    media: EncoderMediaConfig = Field(default_factory=EncoderMediaConfig,
                                        description="How media are decoded for the encoder (a video's frame embeddings are averaged).")
    alpha: float = Field(0.5, ge=0, description="Weight of the visual consistency reward VCR (PRPO: 0.5).")
    beta: float = Field(0.5, ge=0, description="Weight of the prediction consistency reward PCR (PRPO: 0.5).")
    max_paragraphs: int = Field(8, gt=0, description="K: paragraphs kept per response (PRPO: 8).")
    min_chars: int = Field(20, ge=0, description="Paragraphs of at most this many characters are dropped unless they hold an answer line (PRPO: 20).")
    yake_language: str = Field("en", description="YAKE stop-word language of the keyphrase extractor.")
    yake_max_ngram: int = Field(10, gt=0, description="Longest YAKE keyphrase in words (PRPO: 10; top-1 phrase).")


class RewardConfig(Strict):
    """Rewards of SPEC sections 3 and 5 (DAPO, BusterX++, PRPO)."""

    weights: dict[str, float] = Field(
        default_factory=lambda: {"format": 1.0, "overlong": 1.0, "accuracy": 1.0},
        description="Enabled components and their weights in the total reward R: format, overlong, accuracy, "
        "hybrid, thinking (BusterX++ stage 3) and paragraph (PRPO). `paragraph` is a per-paragraph vector, "
        "so it is not summed into R; its mean is logged and the PRPO update uses the vector. A missing or zero "
        "weight loads nothing for its component.",
    )
    max_len: int = Field(750, gt=0, description="L_max of the soft overlong punishment (DAPO section 3.4).")
    overlong_buffer: int = Field(150, gt=0, description="L_c: the punishment ramps over the last L_c tokens before L_max.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    paragraph: ParagraphConfig = Field(default_factory=ParagraphConfig)
    resources: CustomResources = Field(
        default_factory=dict,
        description="Custom Ray resources the reward actor asks for (it scores on CPU, and runs the CLIP encoder "
                    "of `paragraph`; the judges are placed by `judge.resources`). " + PINNING,
    )

    def enabled(self, component: str) -> bool:
        return self.weights.get(component, 0.0) != 0.0

    @model_validator(mode="after")
    def _known_components(self):
        unknown = set(self.weights) - set(REWARD_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown reward component(s) {sorted(unknown)}; known: {sorted(REWARD_COMPONENTS)}")
        if self.overlong_buffer > self.max_len:
            raise ValueError("overlong_buffer must not exceed max_len")
        if self.enabled("thinking") and self.judge.model is None:
            raise ValueError("the thinking reward needs a judge model: set reward.judge.model.path")
        return self


class AlgorithmConfig(Strict):
    """The training algorithm and its options: DAPO (Yu et al. 2025, arXiv 2503.14476), of which GRPO and
    Dr.GRPO are settings; PRPO (Nguyen et al. 2025, SPEC section 5); SFT. See `raytrain/train/algorithms.py`."""

    name: Literal["dapo", "prpo", "sft"] = Field(
        "dapo",
        description="`dapo`: group-relative RL on rollouts (GRPO/Dr.GRPO/GSPO by the options below); `prpo`: the same with "
                    "per-paragraph advantages (needs `reward.weights.paragraph`); `sft`: supervised targets, no rollouts "
                    "(the options below do not apply).",
    )
    clip_low: float = Field(0.2, ge=0, lt=1, description="epsilon_low of Clip-Higher (below 1: the ratio's lower bound 1 - clip_low stays positive).")
    clip_high: float | None = Field(
        0.28, ge=0,
        description="epsilon_high of Clip-Higher (decoupled; GRPO uses 0.2). DAPO raises the upper clip to 0.28, it does not "
                    "remove it; null removes the upper clip (ratios above 1 are never clipped; the lower clip stays).",
    )
    clip_ratio_c: float | None = Field(None, gt=1, description="Dual-clip constant for negative advantages (verl's clip_ratio_c); off when null.")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = Field(
        "token-mean", description="token-mean: DAPO token-level loss; seq-mean-token-mean: GRPO; seq-mean-token-sum: Dr.GRPO."
    )
    advantage_estimator: Literal["grpo", "dr_grpo"] = Field(
        "grpo",
        description="DAPO's outcome advantage: `grpo`, group-normalised (GRPO/DAPO); `dr_grpo`, without the std division "
                    "(Dr.GRPO, arXiv 2503.20783). PRPO's paragraph advantages come with `name: prpo`. See `raytrain/algos/advantages.py`.",
    )
    prpo_outcome_weight: float = Field(
        0.0, ge=0, le=1,
        description="PRPO only: w mixes each response's outcome reward R into its paragraph rewards, r_k <- (1 - w) r_k + w R. "
                    "0 reproduces the label-free paper; labelled data can use it (1 with one paragraph per response is GRPO). "
                    "Under `prpo_group_by: response` a response's shift of its own pool cancels, so w mixes the "
                    "advantages instead: A_k <- (1 - w) A_k + w A_outcome (needs `rollout.sampling.group_size` >= 2).",
    )
    prpo_group_by: Literal["prompt", "response"] = Field(
        "prompt",
        description="PRPO only: the pool in which paragraph rewards are normalised. `prompt`: the paragraphs of all G "
                    "responses of a prompt (SPEC section 5); `response`: the paragraphs of each response alone, as the "
                    "official PRPO code (a verl fork, `rollout.n = 1`, label-free); it works with any group size and "
                    "needs `dynamic_sampling: false` (a response is not a group of prompts to filter).",
    )
    policy_loss: Literal["ppo_clip", "gspo"] = Field(
        "ppo_clip",
        description="`ppo_clip`: per-token clipped ratio (PPO/DAPO/GRPO); `gspo`: clipped sequence-level ratio (GSPO, arXiv 2507.18071; "
                    "the paper uses clip_low 3e-4, clip_high 4e-4, loss_agg seq-mean-token-mean).",
    )
    dynamic_sampling: bool = Field(True, description="Drop groups whose `filter_metric` has zero variance and draw more prompts.")
    filter_metric: Literal["accuracy", "total"] = Field("accuracy", description="Reward component whose variance decides informativeness.")
    max_generation_rounds: int = Field(4, gt=0, description="Generation rounds per step before training on what was kept.")
    overlong_filter: bool = Field(False, description="Mask the loss of truncated responses (DAPO overlong filtering).")
    kl_coef: float = Field(0.0, ge=0, description="beta of a KL penalty to the initial policy; 0 (DAPO default) loads no reference model.")
    kl_kind: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator (Schulman 2020); k3 is GRPO's low-variance one.")
    max_staleness: int = Field(
        0, ge=0,
        description="k: the largest allowed gap between the trainer's policy version and the version that generated a "
                    "sample it trains on; a larger gap fails loudly. With `rollout.mode: async` also how many steps ahead "
                    "a rank submits its first generation round (1: one-step-off); 0 keeps rollouts on-policy.",
    )


class SFTConfig(Strict):
    """Supervised targets `<think>REASONING</think><answer>ANSWER</answer>` (BusterX++ train_sft.py)."""

    answer: Literal["label", "random"] = Field(
        "label", description="`label`: teach the true answer; `random`: teach only the response format (demo warm-up)."
    )
    think: str = Field(
        "I look at the faces, lips, textures and motion.",
        description="Reasoning of rows without an `explanation` (DF-R5 ships explanations); `/no_think` rows get an empty think.",
    )


class TrainConfig(Strict):
    num_workers: int = Field(2, gt=0, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker and the NCCL backend; gloo on CPU.")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    torch_threads: int = Field(1, gt=0, description="Intra-op threads per worker on CPU.")
    resources: CustomResources = Field(
        default_factory=dict,
        description="Custom Ray resources each training worker asks for beside `cpus_per_worker` and its GPU (Ray "
                    "Train's `resources_per_worker`). With `{trainer: 1}` and nodes started with one `trainer` "
                    "each, every worker gets a node of its own. " + PINNING,
    )
    total_steps: int | None = Field(100, gt=0, description="Optimizer steps of the run; null: until `data.epochs` passes are used up.")
    prompts_per_worker: int = Field(4, gt=0, description="Prompts (groups, for RL) per worker per step.")
    micro_batch_size: int | None = Field(
        None, gt=0,
        description="Sequences per forward/backward pass (an RL group is G sequences); a step accumulates the "
                    "gradients of all its micro-batches before one optimizer step, with the same loss as one pass. "
                    "null: a worker's whole batch in one pass (or `gradient_accumulation_steps` passes). Lower it when "
                    "activations do not fit.",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None, gt=0,
        description="Micro-batches formed by a token budget instead of a row count: the step's rows, longest first, "
                    "are packed so that each micro-batch's padded tokens (rows x its longest prompt + response) stay "
                    "within this many; a row longer than the budget is a micro-batch of its own. Rows of similar "
                    "length then share a pass, so less compute goes to padding (the step's `padding_fraction` "
                    "metric), and a pass's activations are bounded by tokens, not rows. The step's loss and update "
                    "are those of the whole batch either way. Set this, `micro_batch_size` or "
                    "`gradient_accumulation_steps`, not two of them.",
    )
    gradient_accumulation_steps: int | None = Field(
        None, gt=0,
        description="Gradient accumulation as the seed and Hugging Face name it: forward/backward passes per optimizer "
                    "step. A worker's step batch (`prompts_per_worker` prompts; x G sequences for RL) is split into "
                    "micro-batches of ceil(rows / N) sequences: N passes when N divides it, fewer otherwise. The step's "
                    "loss and update stay those of the whole batch. HF's per_device_train_batch_size x gradient_accumulation_steps is "
                    "`prompts_per_worker` here (SFT). Set this or `micro_batch_size`, not both.",
    )
    lr: float = Field(1e-6, gt=0, description="Learning rate (DAPO full fine-tune: 1e-6; LoRA: 1e-5).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    zero_stage: Literal[0, 2, 3] = Field(
        2,
        description="DeepSpeed ZeRO stage (Rajbhandari et al. 2020). 2 shards gradients and optimizer states; 3 also the "
                    "parameters, gathered layer by layer in every forward and onto rank 0 for each weight sync and export "
                    "(for full fine-tuning of a model whose weights, gradients and Adam states do not fit a GPU). 0 shards "
                    "nothing: DeepSpeed's plain data parallelism, whole gradients and Adam states on every rank, stepped "
                    "in place. It spares ZeRO's copies into and out of flat partitions (measured on CPU, 34.8 M "
                    "parameters: a step 1.07x bare torch's against ZeRO-2's 1.31x): for one worker, where there is "
                    "nothing to shard, or LoRA, whose states are small.",
    )
    zero3_param_persistence_threshold: int = Field(
        100_000, ge=0,
        description="ZeRO-3: parameters of at most this many elements stay whole on every rank instead of being "
                    "sharded, sparing a gather for each small one (DeepSpeed's default).",
    )
    offload_optimizer: Literal["none", "cpu"] = Field(
        "none",
        description="ZeRO-Offload (Ren et al. 2021, arXiv 2101.06840): `cpu` keeps the Adam states (and the fp32 master "
                    "weights) in host memory and steps them there with DeepSpeed's CPU Adam (a C++ op JIT-built with g++ "
                    "and ninja on first use, ~1.5 min on 2 cores, then cached in ~/.cache/torch_extensions).",
    )
    offload_params: Literal["none", "cpu"] = Field(
        "none", description="ZeRO-Infinity parameter offload: `cpu` keeps the sharded weights in host memory between uses. ZeRO-3 only.",
    )
    deepspeed_config: Path | dict[str, Any] | None = Field(
        None,
        description="A DeepSpeed config file (JSON, or YAML) merged over the one the trainer generates: its keys win "
                    "(bucket sizes, overlap_comm, communication dtype, a scheduler, ...). Keys the trainer computes are "
                    "refused with the option that sets them: batch sizes and accumulation (`train.micro_batch_size`, "
                    "`train.gradient_accumulation_steps`), the optimizer (`train.lr`, `train.weight_decay`), bf16/fp16 "
                    "(`model.dtype`), the ZeRO stage and offload devices (`train.zero_stage`, `train.offload_*`); "
                    "`auto` or the trainer's own value is accepted for them. Read at start; a mapping inline works too.",
    )
    checkpoint_every: int = Field(50, gt=0, description="Steps between checkpoints (the last step always checkpoints).")
    keep_checkpoints: int = Field(2, gt=0, description="Checkpoints kept on storage.")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last checkpoint before giving up.")
    controller_poll_s: float = Field(
        0.5,
        gt=0,
        description="How often Ray Train's controller polls the workers (it sets RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, "
                    "Ray's default 2 s): a dead worker is noticed within it, and the controller takes one checkpoint "
                    "per poll, so a worker that checkpoints again sooner waits (measured: 2.0 s per report at "
                    "Ray's default, 0.2 s at 0.2). Steps without a checkpoint never wait: they are not reported to "
                    "Ray Train (their metrics go to metrics.jsonl, the trackers and Ray's metrics).",
    )
    actor_restarts: int = Field(
        3, ge=0,
        description="Times Ray restarts a rollout or reward actor whose process died. Its callers then fail over to the "
                    "last checkpoint (each counts in `max_failures`), which re-sends the policy to the restarted engine. "
                    "Also the retries of a scoring call whose reward scorer raised; one more failure fails the step "
                    "with the scorer's error.",
    )

    @model_validator(mode="after")
    def _accumulation_and_offload(self):
        chosen = [k for k in ("micro_batch_size", "gradient_accumulation_steps", "max_tokens_per_micro_batch") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"set one of micro_batch_size (sequences per pass), gradient_accumulation_steps (passes per step) "
                             f"and max_tokens_per_micro_batch (padded tokens per pass), not {' and '.join(chosen)}")
        if self.offload_params == "cpu" and self.zero_stage != 3:
            raise ValueError("offload_params cpu needs zero_stage 3 (only ZeRO-3 shards parameters)")
        if self.offload_optimizer == "cpu" and self.zero_stage == 0:
            raise ValueError("offload_optimizer cpu needs zero_stage 2 or 3 (ZeRO-Offload moves ZeRO's optimizer partitions)")
        return self


class EvaluationConfig(Strict):
    """Batch inference and the report of `jobs.evaluate` (greedy decoding, SPEC sections 6 and 7)."""

    batch_size: int = Field(8, gt=0, description="Items per inference batch; each finished batch is saved, so a killed evaluation loses at most the batches in flight.")
    num_actors: int | None = Field(
        None, gt=0,
        description="Inference actors; null: one per `rollout.num_gpus` GPUs of the cluster, or `rollout.num_actors` on CPU (logical CPUs overstate real cores there).",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Level of the Wilson (proportions) and bootstrap (F1) intervals.")
    bootstrap_resamples: int = Field(1000, gt=0, description="Resamples of the percentile bootstrap interval of F1.")


class BusterXConfig(Strict):
    """The BusterX++ three-stage pipeline of `jobs.busterx` (SPEC section 6, seed 000).

    Stage 1 DAPO in think mode; stage 2 SFT on stage 1's own correct responses, each rewritten as a
    `/think` and a `/no_think` example; stage 3 DAPO with prompts randomly in either mode. Every
    stage is this config with its `stageN` overrides applied (dotted keys, as `--set`), its share of
    `total_steps`, the previous stage's weights, and `run.output_dir/stageN` as its output.
    """

    total_steps: int = Field(100, gt=0, description="Optimizer steps of all three stages together.")
    shares: list[float] = Field(
        default_factory=lambda: [0.70, 0.05, 0.25],
        description="Share of `total_steps` per stage (BusterX++: 70/5/25); each stage gets at least one step.",
    )
    fusion_samples: int = Field(300, gt=0, description="Stage 2: correct stage-1 responses to collect (BusterX++: a few hundred).")
    stage1: dict[str, Any] = Field(default_factory=dict, description="Overrides of stage 1 (DAPO, think mode), e.g. `train.lr: 1.0e-6`.")
    stage2: dict[str, Any] = Field(default_factory=dict, description="Overrides of stage 2 (SFT on the fused modes), e.g. `train.lr: 1.0e-5`.")
    stage3: dict[str, Any] = Field(
        default_factory=lambda: {"reward.weights.hybrid": 1.0, "reward.weights.thinking": 1.0},
        description="Overrides of stage 3 (DAPO, random modes): by default adds the hybrid and thinking rewards "
                    "(the thinking reward needs `reward.judge.model`).",
    )

    @model_validator(mode="after")
    def _three_shares(self):
        if len(self.shares) != 3 or any(s < 0 for s in self.shares) or sum(self.shares) <= 0:
            raise ValueError(f"shares must be three non-negative numbers with a positive sum, got {self.shares}")
        return self


class DXLLaVAConfig(Strict):
    """The DX-LLaVA pipeline of `jobs.dx_llava` (SPEC section 7, seed 001; the official `tuanrpt/PRPO` code).

    Stage `align` (feature alignment: projector and head train), `instruct` (visual instruction tuning:
    projector, head and language model, the official DX-LLaVA training) and `prpo` (PRPO on the language
    model). Every stage is this config with its settings (algorithm and `model.trainable`), its overrides
    below (dotted keys, as `--set`; a mapping merges into the section it names, so
    `rollout.sampling: {top_p: 0.7}` keeps the other sampling keys and a reward is switched off with weight
    0; the stage's steps are `train.total_steps`, or with it null `data.epochs` passes, the official run's
    "epochs per domain"), the previous stage's weights and `run.output_dir/<stage>` as its output.
    """

    align: dict[str, Any] = Field(default_factory=dict, description="Overrides of stage 1, feature alignment (SFT), e.g. `train.lr: 1.0e-3`.")
    instruct: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of stage 2, visual instruction tuning (SFT; official: lr 2e-5, 1 epoch per domain).",
    )
    prpo: dict[str, Any] = Field(
        default_factory=lambda: {"algorithm.prpo_group_by": "response", "algorithm.dynamic_sampling": False,
                                 "rollout.sampling.group_size": 1, "reward.weights.paragraph": 1.0},
        description="Overrides of stage 3, PRPO; by default the official grouping: each response's paragraphs "
                    "(`prpo_group_by: response`, one response per prompt, no dynamic sampling) with the paragraph "
                    "reward. Replacing the mapping replaces these defaults too.",
    )


class ClusterConfig(Strict):
    num_cpus: int | None = Field(None, gt=0, description="Logical CPUs of the embedded local Ray (ignored when joining a cluster).")
    dashboard: bool = Field(
        False,
        description="Start the dashboard with the embedded Ray (bound to 127.0.0.1). Without it Ray Train's placement-group "
                    "cleaner, which asks the dashboard's state API, is kept from warning once a second (the embedded Ray "
                    "ends with the job, placement groups and all).",
    )
    metrics_export_port: int | None = Field(
        None, gt=0, lt=65536,
        description="Port of the embedded Ray's Prometheus metrics endpoint (what `ray start --metrics-export-port` sets "
                    "on a cluster); null: a port Ray picks. Ray binds it on the node's network interfaces "
                    "(keep the port firewalled on a shared host). Ray writes the service-discovery file "
                    "Prometheus reads (`monitoring/prometheus.yml`) either way.",
    )
