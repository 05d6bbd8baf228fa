"""Driver side of a run: Ray (embedded or cluster), actors, the dataset, and the TorchTrainer."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import ray
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from actors.reward import RewardActor
from actors.rollout import start_rollout_actors, wait_loaded
from raytrain.cluster import init_ray, node_resources
from raytrain.config import Config, placement
from raytrain.data.pipeline import split_rows
from raytrain.models.loading import merge_adapter
from raytrain.models.prompts import build_dataset
from raytrain.observe.console import quiet_ray_data, use_bar
from raytrain.observe.curves import plot_training
from raytrain.observe.ray_metrics import run_tags
from raytrain.train.algorithms import ALGORITHMS
from raytrain.train.checkpoint import MODEL_DIR, STORAGE_DIR, TrainerState, latest_checkpoint
from raytrain.train.loop import train_loop_per_worker

FINAL_DIR = "final"  # under run.output_dir: the last checkpoint's Hugging Face export
MERGED_DIR = "final-merged"  # under run.output_dir: with `model.lora.export_merged`, base + adapter in one model
CURVES = "training.png"  # under run.output_dir: the curves of metrics.jsonl, drawn at the end of every run


def check_placement(cfg: Config) -> None:
    """Join (or start) Ray and refuse, with what each role asks for, a run the cluster cannot hold:
    its actors would otherwise wait for resources forever (`raytrain.config.placement`)."""
    init_ray(cfg.cluster)
    placement.check(placement.roles(cfg, ALGORITHMS[cfg.algorithm.name].needs_rollouts), node_resources())


def train(cfg: Config) -> Path:
    """Run (or resume) training; returns the final Hugging Face export folder."""
    cfg = cfg.with_absolute_paths()
    # Wall-clock marks of the start-up, which the first step's record breaks down (`startup_metrics`).
    startup = {"started": time.time()}
    check_placement(cfg)
    startup["ray_ready"] = time.time()
    quiet_ray_data(cfg.run)
    out = cfg.run.output_dir
    storage = out / STORAGE_DIR
    previous = latest_checkpoint(storage)
    consumed = frozenset(TrainerState.load(previous).consumed) if previous else frozenset()
    if previous:
        print(f"[run] resuming from {previous} ({len(consumed)} prompts already consumed)", flush=True)

    rows = split_rows(cfg.data, cfg.data.train_split, epochs=cfg.data.epochs, seed=cfg.run.seed, exclude=consumed,
                      multiple_of=cfg.train.num_workers)
    restarts = cfg.train.actor_restarts
    # Read by Ray Train's controller, to which the trainer passes it on.
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(cfg.train.controller_poll_s)
    rollouts, reward = [], None
    if ALGORITHMS[cfg.algorithm.name].needs_rollouts:
        tags = run_tags(cfg.run, cfg.algorithm)
        if not cfg.rollout.colocate:  # colocated: each training worker generates with its own module
            # They load their engines while this process builds the dataset (`wait_loaded` below).
            rollouts = start_rollout_actors(cfg.model, cfg.rollout, max_restarts=restarts, tags=tags)
        encoder_gpus = cfg.reward.paragraph.num_gpus if cfg.reward.enabled("paragraph") else 0
        reward = RewardActor.options(num_gpus=encoder_gpus, resources=dict(cfg.reward.resources), max_restarts=restarts).remote(
            cfg.reward, cfg.data.answer_format, tags=tags, judge_restarts=restarts)
    dataset = build_dataset(cfg, rows)
    wait_loaded(rollouts)
    startup["fit"] = time.time()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "rollout_actors": rollouts, "reward_actor": reward,
                           "console_bar": use_bar(cfg.run), "startup": startup},
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker,
                                  **({"GPU": placement.worker_gpu_share(cfg)} if cfg.train.use_gpu else {}),
                                  **cfg.train.resources},
        ),
        run_config=RunConfig(
            name=STORAGE_DIR,
            storage_path=str(out),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
        ),
        datasets={"train": dataset},
        dataset_config=_ingest(cfg),
    )
    try:
        result = trainer.fit()
    finally:
        for actor in [*rollouts, *([reward] if reward else [])]:
            ray.kill(actor)
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint; see {storage}")
    final = out / FINAL_DIR
    shutil.rmtree(final, ignore_errors=True)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(Path(d) / MODEL_DIR, final)
        state = TrainerState.load(d)
    _report_skipped(state.skipped)
    if (out / "metrics.jsonl").is_file():
        print(f"[run] curves: {plot_training(out / 'metrics.jsonl', out / CURVES)}", flush=True)
    if cfg.model.lora.enabled and cfg.model.lora.export_merged:
        shutil.rmtree(out / MERGED_DIR, ignore_errors=True)
        print(f"[run] merged weights: {merge_adapter(final, out / MERGED_DIR, cfg.model)}", flush=True)
    return final


def _ingest(cfg: Config) -> DataConfig:
    """Ray Train's ingest options: its defaults, in row order under `data.preserve_order`."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = options.preserve_order or cfg.data.preserve_order
    return DataConfig(execution_options=options)


def _report_skipped(skipped: list[dict]) -> None:
    """One line per undecodable file; a file is skipped again in every epoch that draws it."""
    by_path: dict[str, list[dict]] = {}
    for s in skipped:
        by_path.setdefault(s["path"], []).append(s)
    if not by_path:
        return
    print(f"[run] {len(by_path)} media file(s) could not be decoded and were skipped ({len(skipped)} draws):", flush=True)
    for path, draws in by_path.items():
        times = f" ({len(draws)} times)" if len(draws) > 1 else ""
        print(f"  {path}: {draws[-1]['reason']}{times}", flush=True)
