"""The vLLM rollout engine: the `RolloutEngine` interface of raytrain.engines.base, served by vLLM.

vLLM is imported lazily, so this module imports without it; building a
`VLLMEngine` without vLLM installed fails with how to install it.

Weights arrive as versioned buckets (`raytrain.weight_sync.protocol.BucketReceiver`):
- full weights are loaded in place bucket by bucket through vLLM's layerwise
  reload (`WeightSyncWorker`, mixed into every vLLM worker), which re-runs each
  layer's post-load processing (CPU GEMM packing, quantisation) once all of its
  tensors arrived; the prefix cache is reset so no KV computed with old weights
  is reused. A bucket comes either through this process (pickled into vLLM's
  engine-core RPC) or, once the engine joined the trainer's weight group, by a
  broadcast straight into every vLLM worker (NCCL on GPUs: no host copy);
- under LoRA only the adapter travels: each version is written as a PEFT
  adapter (safetensors) to its own folder and served under a new
  `LoRARequest` id, loaded eagerly so a bad adapter fails the sync, not the
  next rollout. The frozen base is never re-sent.

Log-probabilities are vLLM's "processed" ones: after the vision special tokens
are masked out and the temperature applied, as the trainer recomputes them
(`raytrain.models.logprobs.masked_logprobs`). With `top_p < 1` they are those of the
nucleus-truncated distribution actually sampled from, which the trainer does not
truncate; the transformers engine reports untruncated ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from safetensors.torch import save_file

from raytrain.config.sections import DataConfig, ModelConfig, RolloutConfig, SamplingConfig
from raytrain.data.batch import Prompt, Sample
from raytrain.data.media import decode_media
from raytrain.models.loading import load_family, sync_spec
from raytrain.weight_sync.group import GroupAddress, WeightGroup
from raytrain.weight_sync.protocol import BucketMeta, BucketReceiver, Shape, pack_bucket, unpack_bucket

INSTALL_HINT = "rollout.engine 'vllm' needs vLLM: `pip install -e .[vllm]` (CUDA), or see `make test-vllm` for the CPU build"


class WeightSyncWorker:
    """vLLM worker extension (`worker_extension_cls`): in-place weight reload in buckets.

    Runs inside each vLLM worker (each tensor-parallel rank gets every bucket and
    keeps its shard: `load_weights` shards checkpoint-format tensors itself).
    """

    def begin_weight_sync(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model_runner.get_model())

    def load_weight_bucket(self, meta: BucketMeta, data: bytes) -> None:
        self.model_runner.get_model().load_weights(unpack_bucket(meta, data).items())

    def join_weight_group(self, address: tuple, first_rank: int) -> None:
        """`address`: a `GroupAddress` as a tuple (msgpack, vLLM's engine-core RPC, has no dataclasses)."""
        self.weight_group = None  # a restarted sender's new group replaces the old one
        self.weight_group = WeightGroup.join(GroupAddress(*address), first_rank + self.rank)

    def receive_weight_bucket(self, meta: BucketMeta) -> None:
        group = getattr(self, "weight_group", None)
        if group is None:
            raise RuntimeError("weight bucket broadcast before this vLLM worker joined a weight group")
        self.received_bucket = group.receive(meta, self.device)

    def load_received_bucket(self) -> None:
        bucket, self.received_bucket = self.received_bucket, None
        self.model_runner.get_model().load_weights(bucket.items())

    def finish_weight_sync(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)
        self.model_runner.reset_encoder_cache()
        self.model_runner.reset_mm_cache()


class VLLMEngine(BucketReceiver):
    """G samples per prompt from vLLM, with the sampled tokens' log-probabilities and the weight version.

    `rollout.vllm` sets tensor parallelism, the context length, the memory share and the
    mode: `colocated` builds the engine with sleep mode and keeps it asleep (weights
    offloaded, KV cache freed) except while it generates or receives weights, so a
    training worker can use the same GPU in between. Sleep mode needs CUDA.
    Multimodal prompts (`data` is needed for them) are re-decoded from `prompt.path` and
    passed as frames with the model's own chat-template text; vLLM runs the processor.
    """

    def __init__(self, cfg: ModelConfig, rollout: RolloutConfig, *, weights: str | None = None, data: DataConfig | None = None):
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        v = rollout.vllm
        self.cfg, self.data, self.colocated = cfg, data, v.mode == "colocated"
        adapter = weights is not None and (Path(weights) / "adapter_config.json").exists()
        model_path = weights if weights is not None and not adapter else cfg.path
        # Read by vLLM's CPU backend only; a GPU build ignores it.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(v.cpu_kvcache_gb))
        self.llm = LLM(
            model=model_path,
            tokenizer=cfg.path if adapter else model_path,
            dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
            tensor_parallel_size=v.tensor_parallel_size,
            max_model_len=v.max_model_len,
            gpu_memory_utilization=v.gpu_memory_utilization,
            enforce_eager=v.enforce_eager,
            seed=v.seed,
            enable_lora=cfg.lora.enabled,
            # vLLM sizes its adapter slots from a fixed menu of ranks.
            max_lora_rank=next(r for r in (1, 8, 16, 32, 64, 128, 256, 320, 512) if r >= cfg.lora.r) if cfg.lora.enabled else None,
            max_loras=1,
            enable_sleep_mode=self.colocated,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightSyncWorker",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.family = load_family(cfg)
        self.eos_id, self.suppress_ids = self.family.end_id, self.family.suppress_ids
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        self._allowed = sorted(set(range(vocab)) - set(self.suppress_ids))
        self._spec = sync_spec(cfg)
        self.version = 0
        self._asleep = False
        self._adapter_root = Path(tempfile.mkdtemp(prefix="vllm-adapters-"))
        weakref.finalize(self, shutil.rmtree, self._adapter_root, ignore_errors=True)
        self._adapter_parts: dict[str, torch.Tensor] = {}
        self._lora_serial = 0
        self._lora = None
        if adapter:
            self._serve_adapter(Path(weights), "initial")
        self._sleep()

    # -- generation ---------------------------------------------------------------------------

    def _sampling_params(self, sampling: SamplingConfig, n: int, greedy: bool):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0,  # the sampled token's own log-probability
            allowed_token_ids=self._allowed,
            stop_token_ids=[self.eos_id],
            skip_special_tokens=True,
        )

    def _vllm_input(self, prompt: Prompt) -> dict:
        """The prompt's tokens, or with media its text and frames re-decoded from `prompt.path` (vLLM runs the processor)."""
        if prompt.pixel_values.size == 0:
            return self.family.vllm_input(prompt, None)
        if self.data is None:
            raise ValueError(f"{prompt.path}: a multimodal prompt needs the data config (frame count, pixel budget)")
        return self.family.vllm_input(prompt, decode_media(prompt.path, "video" if prompt.is_video else "image", self.data))

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample]]:
        self.check_serving()
        params = self._sampling_params(sampling, 1 if greedy else sampling.group_size, greedy)
        self._wake()
        try:
            outputs = self.llm.generate([self._vllm_input(p) for p in prompts], params, lora_request=self._lora, use_tqdm=False)
        finally:
            self._sleep()
        return [[self._sample(c) for c in out.outputs] for out in outputs]

    def _sample(self, completion) -> Sample:
        ids = list(completion.token_ids)
        return Sample(
            token_ids=ids,
            logprobs=[float(step[token].logprob) for token, step in zip(ids, completion.logprobs)],
            # Decoded as the transformers engine does, so character spans of the tokens (PRPO) match the text.
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            truncated=completion.finish_reason == "length",
            version=self.version,
        )

    # -- colocated mode -----------------------------------------------------------------------

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        if self.colocated and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    # -- weight sync --------------------------------------------------------------------------

    def head_probs(self, prompts: list[Prompt]) -> list[float | None]:
        """vLLM holds no binary head (only the language model): the transformers engine reports it."""
        return [None] * len(prompts)

    def sync_spec(self) -> dict[str, Shape]:
        return self._spec

    def begin_update(self, version: int, plan: dict[str, Shape], group: GroupAddress | None = None) -> None:
        super().begin_update(version, plan, group)  # checks the plan and the group before anything changes
        self._adapter_parts = {}
        if not self.cfg.lora.enabled:
            self._wake()
            self.llm.collective_rpc("begin_weight_sync")

    def _apply_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        if self.cfg.lora.enabled:
            self._adapter_parts.update({k: v.detach().to("cpu").contiguous() for k, v in bucket.items()})
        else:
            self.llm.collective_rpc("load_weight_bucket", args=pack_bucket(bucket))

    def join_weight_group(self, address: GroupAddress, first_rank: int) -> int:
        if self.cfg.lora.enabled:
            raise ValueError("under LoRA the vLLM engine takes adapters through the object store, not a weight group")
        self.weight_group = None  # until every worker joined the new group
        self.llm.collective_rpc("join_weight_group", args=(dataclasses.astuple(address), first_rank))
        self.weight_group = address
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def _receive(self, meta: BucketMeta) -> None:
        self.llm.collective_rpc("receive_weight_bucket", args=(meta,))

    def _apply_received(self) -> None:
        self.llm.collective_rpc("load_received_bucket")

    def _abort(self, applied: bool) -> bool:
        if self.cfg.lora.enabled:  # nothing was served from the stashed parts
            self._adapter_parts = {}
            return True
        # Ends the layerwise reload either way: layers that got no tensor get their old ones back.
        self.llm.collective_rpc("finish_weight_sync")
        self.llm.reset_prefix_cache()
        self._sleep()
        return not applied

    def _commit(self, version: int) -> None:
        if self.cfg.lora.enabled:
            folder = self._adapter_root / f"v{version}-{self._lora_serial + 1}"
            self._write_adapter(folder, self._adapter_parts)
            self._adapter_parts = {}
            self._serve_adapter(folder, f"policy-v{version}")
        else:
            self.llm.collective_rpc("finish_weight_sync")
            self.llm.reset_prefix_cache()
            self._sleep()

    def _write_adapter(self, folder: Path, state: dict[str, torch.Tensor]) -> None:
        lora = self.cfg.lora
        folder.mkdir(parents=True)
        save_file(state, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.cfg.path,
            "r": lora.r,
            "lora_alpha": lora.alpha,
            "lora_dropout": 0.0,
            "target_modules": lora.target_modules,
            "bias": "none",
        }))

    def _serve_adapter(self, folder: Path, name: str) -> None:
        """Serve the adapter in `folder` under a new id (vLLM caches adapters by id), loaded now."""
        from vllm.lora.request import LoRARequest

        self._lora_serial += 1
        request = LoRARequest(name, self._lora_serial, str(folder))
        self._wake()
        try:
            if not self.llm.llm_engine.add_lora(request):
                raise RuntimeError(f"vLLM did not load adapter {folder}")
        finally:
            self._sleep()
        previous, self._lora = self._lora, request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)
            if Path(previous.lora_path).parent == self._adapter_root:
                shutil.rmtree(previous.lora_path, ignore_errors=True)
