"""Rollout throughput of transformers vs vLLM on one model and one sampling setting, and weight-sync time.

Runs in the vLLM environment (`make env-vllm`):

    .venv-vllm/bin/python -m bench.rollout [--model vl|text --hidden-size 256 --layers 4 ...]

Both sides serve the same randomly initialised model through the project's engines,
`TransformersEngine` (one prompt with G return sequences per `generate` call) and
`VLLMEngine` (the whole batch in one call), with the same `SamplingConfig`: G samples for
each of the same prompts, the same temperature, top-p and length limit, vision tokens
suppressed. `--model vl` (default): a tiny Qwen2.5-VL (the tiny model's tokenizer and
processors) with image and video prompts alternating, built by its model family from
frames as the pipeline builds them; `--model text`: a text-only Qwen2 on chat prompts. Then one full-weight
sync into the vLLM engine (bucketed, through vLLM's layerwise reload) is timed twice,
with buckets passed through the engine's process and broadcast over a gloo weight
group into vLLM's worker, against copying the same bytes in memory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from raytrain.config.sections import MediaConfig, ModelConfig, RolloutConfig  # noqa: E402
from raytrain.data.batch import Prompt  # noqa: E402
from raytrain.models.loading import sync_state  # noqa: E402
from raytrain.models.tiny import (  # noqa: E402
    _CORPUS,
    build_tiny_model,
    build_tiny_processor,
    build_tiny_text_model,
    save_tiny_text_model,
)
from raytrain.weight_sync.sender import LocalEngines, open_weight_group, push_weights  # noqa: E402


def _timed(engine, prompts, sampling) -> tuple[int, float]:
    """Tokens generated (each sample up to and including its end-of-sequence token) and seconds."""
    engine.generate(prompts[:1], sampling)  # warm-up (vLLM's first call is slow)
    t0 = time.perf_counter()
    groups = engine.generate(prompts, sampling)
    return sum(len(s.token_ids) for g in groups for s in g), time.perf_counter() - t0


def _vl_model(out: str, hidden_size: int, layers: int, side: int):
    """A tiny Qwen2.5-VL saved to `out`, and how to build other weights of its shape (for the sync)."""
    processor = build_tiny_processor(max_pixels=side * side)
    build_tiny_model(processor, hidden_size=hidden_size, layers=layers).save_pretrained(out)
    processor.save_pretrained(out)
    return lambda: build_tiny_model(processor, hidden_size=hidden_size, layers=layers, seed=1)


def _media_prompts(family, n: int, side: int, frames: int) -> list[Prompt]:
    """`n` prompts, images and `frames`-frame videos (1 s clips) alternating, of random side x side frames."""
    rng = np.random.default_rng(0)
    budget = MediaConfig(max_pixels=side * side, min_pixels=28 * 28)
    prompts = []
    for i in range(n):
        is_video, media = i % 2 == 1, ("video" if i % 2 else "image")
        pixels = rng.integers(0, 256, (frames if is_video else 1, side, side, 3), dtype=np.uint8)
        encoded = family.encode_prompt(family.chat_text(f"Is this {media} real or fake? ({i})", media), pixels, is_video,
                                       budget, 1.0 if is_video else None)
        prompts.append(Prompt(key=str(i), id=str(i), path=f"{media}-{i}", label="real", category="bench", is_video=is_video,
                              **encoded))
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("vl", "text"), default="vl", help="tiny Qwen2.5-VL with media, or text-only Qwen2")
    parser.add_argument("--side", type=int, default=112, help="frame side in pixels (--model vl)")
    parser.add_argument("--frames", type=int, default=4, help="frames per video (--model vl)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--hidden-size", type=int, default=256, help="model width (head_dim 32)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--bucket-mb", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the transformers side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from raytrain.engines.transformers_engine import TransformersEngine
    from raytrain.engines.vllm_engine import VLLMEngine

    with tempfile.TemporaryDirectory() as tmp:
        if args.model == "vl":
            new_weights = _vl_model(tmp, args.hidden_size, args.layers, args.side)
        else:
            save_tiny_text_model(tmp, hidden_size=args.hidden_size, layers=args.layers)
        cfg = ModelConfig(path=tmp, dtype="float32")
        rollout = RolloutConfig(
            engine="vllm",
            sampling={"group_size": args.group_size, "temperature": args.temperature, "top_p": args.top_p,
                      "max_new_tokens": args.max_new_tokens},
            vllm={"max_model_len": 1024, "enforce_eager": True},
        )
        sampling = rollout.sampling
        hf = TransformersEngine(cfg)
        if args.model == "vl":
            prompts = _media_prompts(hf.family, args.prompts, args.side, args.frames)
            kind, work = "Qwen2.5-VL", f"images and {args.frames}-frame videos of {args.side}x{args.side} alternating, "
        else:
            prompts = [hf.family.text_prompt(_CORPUS[i % len(_CORPUS)] + f" ({i})") for i in range(args.prompts)]
            kind, work = "text-only Qwen2", ""

            def new_weights():
                return build_tiny_text_model(engine.tokenizer, hidden_size=args.hidden_size, layers=args.layers, seed=1)
        params = sum(p.numel() for p in hf.model.parameters())
        print(f"model: {kind}, hidden {args.hidden_size}, {args.layers} layers, {params / 1e6:.1f} M parameters (float32)")
        print(f"work: {len(prompts)} prompts ({work}mean {np.mean([len(p.input_ids) for p in prompts]):.0f} prompt tokens) "
              f"x G={sampling.group_size}, max_new_tokens {sampling.max_new_tokens}, "
              f"temperature {sampling.temperature}, top_p {sampling.top_p}")

        # transformers first: vLLM's CPU backend rebinds this process's OpenMP threads when it starts.
        hf_tokens, hf_s = _timed(hf, prompts, sampling)
        del hf

        t0 = time.perf_counter()
        engine = VLLMEngine(cfg, rollout)
        init_s = time.perf_counter() - t0
        print(f"TransformersEngine: {args.threads} torch thread(s); VLLMEngine: {torch.get_num_threads()} thread(s) "
              f"on {os.cpu_count()} cores")
        vllm_tokens, vllm_s = _timed(engine, prompts, sampling)

        hf_rate, vllm_rate = hf_tokens / hf_s, vllm_tokens / vllm_s
        print(f"TransformersEngine: {hf_tokens} tokens in {hf_s:.2f} s = {hf_rate:,.0f} tokens/s")
        print(f"VLLMEngine:         {vllm_tokens} tokens in {vllm_s:.2f} s = {vllm_rate:,.0f} tokens/s (engine start {init_s:.1f} s)")
        print(f"vLLM / transformers throughput: {vllm_rate / hf_rate:.1f}x")

        state = sync_state(new_weights())
        nbytes = sum(v.numel() * v.element_size() for v in state.values())
        bucket_bytes = args.bucket_mb << 20

        def best_of_3(sync) -> float:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                sync(engine.version + 1)
                times.append(time.perf_counter() - t0)
            return min(times)

        engines = LocalEngines([engine])
        sync_s = best_of_3(lambda v: push_weights(engines, state, v, bucket_bytes))
        group = open_weight_group(engines, "gloo", timeout_s=60.0)
        broadcast_s = best_of_3(lambda v: push_weights(engines, state, v, bucket_bytes, group))
        targets = {k: torch.empty_like(v) for k, v in state.items()}
        copies = []
        for _ in range(3):
            t0 = time.perf_counter()
            for k, v in state.items():
                targets[k].copy_(v)
            copies.append(time.perf_counter() - t0)
        copy_s = min(copies)
        print(f"full-weight sync of {nbytes / 2**20:.1f} MiB in {args.bucket_mb} MiB buckets (best of 3 each):")
        print(f"  buckets through the engine process (the object-store path's last hop): {sync_s * 1e3:.1f} ms "
              f"= {sync_s / copy_s:.0f}x an in-memory copy of the same bytes ({copy_s * 1e3:.2f} ms)")
        print(f"  gloo broadcast straight into vLLM's worker (the NCCL path's code): {broadcast_s * 1e3:.1f} ms "
              f"= {broadcast_s / copy_s:.0f}x the copy; {broadcast_s / sync_s:.2f}x the path above")


if __name__ == "__main__":  # vLLM may spawn processes that re-import this module
    main()
