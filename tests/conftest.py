"""Shared fixtures: a tiny Qwen2.5-VL on disk, a small synthetic dataset with its manifest,
a tiny config close to jobs/configs/demo.yaml, and a local Ray instance."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from raytrain.models.tiny import save_tiny_model

    out = tmp_path_factory.mktemp("tiny-model")
    save_tiny_model(out)
    return out


@pytest.fixture(scope="session")
def tiny_dx_llava_dir(tmp_path_factory) -> Path:
    """The tiny DX-LLaVA, built by `jobs.make_tiny_model --family dx-llava`."""
    from jobs.make_tiny_model import main

    out = tmp_path_factory.mktemp("tiny-dx-llava")
    main(["--family", "dx-llava", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """16 train + 8 test synthetic items with `manifest.parquet` next to them."""
    from raytrain.data.ingest import Source, ingest, scan_sources
    from raytrain.data.manifest import write_manifest
    from raytrain.data.synthetic import make_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(out, num_train=16, num_test=8, seed=0)
    ingested = ingest(scan_sources([Source(out, "genbuster", "synthetic")]))
    assert not ingested.rejects, ingested.rejects
    write_manifest(ingested.table, out / "manifest.parquet")
    return out


def config_dict(model_path, manifest, output_dir) -> dict:
    """A plain config dict for `parse_config`: jobs/configs/demo.yaml made tiny enough for CPU tests."""
    return {
        "run": {"name": "test", "output_dir": str(output_dir), "seed": 0},
        "model": {"path": str(model_path), "dtype": "float32"},
        "data": {
            "manifest": str(manifest),
            "num_frames": 8,
            "max_pixels": 3136,
            "min_pixels": 784,
            "prompt": "Is this {media} real or fake?",
        },
        "rollout": {
            "num_actors": 1,
            "sampling": {"group_size": 4, "temperature": 1.0, "max_new_tokens": 16},
        },
        "reward": {"weights": {"format": 1.0, "overlong": 1.0, "accuracy": 1.0}, "max_len": 16, "overlong_buffer": 4},
        "algorithm": {"name": "dapo", "clip_low": 0.2, "clip_high": 0.28, "dynamic_sampling": True, "max_generation_rounds": 3},
        "train": {
            "num_workers": 2,
            "total_steps": 2,
            "prompts_per_worker": 2,
            "lr": 1e-3,
            "checkpoint_every": 1,
            "max_failures": 0,
        },
    }


@pytest.fixture(scope="session")
def make_config_dict(tiny_model_dir, synthetic_dir):
    """`make_config_dict(output_dir)`: the tiny config dict, for fixtures wider than one test."""

    def make(output_dir) -> dict:
        return config_dict(tiny_model_dir, synthetic_dir / "manifest.parquet", output_dir)

    return make


@pytest.fixture
def base_config_dict(tiny_model_dir, synthetic_dir, tmp_path) -> dict:
    """A fresh tiny config dict per test; `run.output_dir` is `tmp_path/"run"`."""
    return config_dict(tiny_model_dir, synthetic_dir / "manifest.parquet", tmp_path / "run")


def _local_ray():
    """The tests' local Ray: 8 logical CPUs, so workers, actors and decode tasks fit on 2 cores."""
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) < 8:
        # Started by code under test after another test shut Ray down (test_job_submit must, for its
        # own head node); jobs.prepare_data sizes its Ray to --workers, too small for training.
        ray.shutdown()
    if not ray.is_initialized():
        from raytrain.cluster import init_ray

        init_ray(num_cpus=8)  # as a job starts its embedded Ray: a fresh instance, no dashboard
    return ray


@pytest.fixture(scope="session")
def ray_session():
    yield _local_ray()
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(ray_session):
    """A local Ray for this module's tests (restarted when an earlier module left none or a smaller one)."""
    return _local_ray()


def _with_undecodable_rows(manifest: Path, out_dir: Path) -> tuple[Path, list[str]]:
    """A copy of `manifest` whose train split also names an empty, a non-video and a missing file."""
    import pyarrow as pa

    from raytrain.data.manifest import read_manifest, write_manifest

    table = read_manifest(manifest)
    template = next(r for r in table.to_pylist() if r["split"] == "train")
    bad = []
    for name, content in (("empty.mp4", b""), ("text.mp4", b"not a video at all"), ("missing.mp4", None)):
        path = out_dir / name
        if content is not None:
            path.write_bytes(content)
        bad.append({**template, "id": f"bad-{name}", "path": str(path)})
    out = out_dir / "manifest.parquet"
    write_manifest(pa.Table.from_pylist(table.to_pylist() + bad, schema=table.schema), out)
    return out, [r["path"] for r in bad]


@pytest.fixture(scope="session")
def warm_run(make_config_dict, synthetic_dir, ray_session, tmp_path_factory):
    """A short format-only SFT on local Ray (random answers), as the demo's warm-up does, over the
    synthetic manifest plus three undecodable files (real data has them).

    Returns (config, final model folder, bad paths). DAPO tests start from this model: they need a
    policy whose groups differ in accuracy, or dynamic sampling keeps nothing."""
    from raytrain.config import parse_config
    from raytrain.train.launch import train
    from tests.helpers.dapo_runs import warm_up_config

    root = tmp_path_factory.mktemp("warmup")
    manifest, bad_paths = _with_undecodable_rows(synthetic_dir / "manifest.parquet", root)
    cfg = parse_config(warm_up_config(make_config_dict(root / "run"), manifest))
    return cfg, train(cfg), bad_paths


@pytest.fixture(scope="session")
def warm_model_dir(warm_run) -> Path:
    return warm_run[1]


@pytest.fixture(scope="session")
def gloo_rank():
    """A torch.distributed world of one gloo rank in this process, for the tests that run a DeepSpeed step
    here. One per session: DeepSpeed caches a clone of the world group, and a second init after
    `destroy_process_group` would find that stale clone."""
    import deepspeed
    import torch.distributed as dist

    from tests.helpers.engine_step import _free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def media_prompts(make_config_dict, tmp_path_factory):
    """Two videos and one image of the synthetic train split, as prompts for the tiny model."""
    from raytrain.config import parse_config
    from raytrain.data.pipeline import prompts_from_batch, split_rows
    from raytrain.models.prompts import PromptBuilder

    cfg = parse_config(make_config_dict(tmp_path_factory.mktemp("prompts-run")))
    rows = split_rows(cfg.data, "train").to_pylist()
    chosen = [r for r in rows if r["media"] == "video"][:2] + [r for r in rows if r["media"] == "image"][:1]
    assert len(chosen) == 3
    batch = {}
    for k in chosen[0]:
        col = np.empty(len(chosen), dtype=object)
        col[:] = [r[k] for r in chosen]
        batch[k] = col
    built, skipped = prompts_from_batch(PromptBuilder(cfg.model, cfg.data)(batch))
    assert not skipped, skipped
    assert [p.is_video for p in built] == [True, True, False]
    return built
