"""Hostile and broken input refused at start (issue 17 item 5): each case calls a job's entry point in
this process and must exit 2 with one line on stderr naming the key or the file, no traceback, and
no Ray started. The model cases read only the folder's files and `config.json`."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml

from jobs import busterx, dapo, prpo, sft
from raytrain.config import parse_config
from raytrain.recipes import preflight


@pytest.fixture(scope="module", autouse=True)
def no_ray():
    """An earlier module's Ray is shut down (the next Ray fixture starts it again), so that these
    tests can tell that a refused job started none."""
    ray.shutdown()


def _model_copy(src, dst, *, weights: str, extra_config: dict | None = None):
    """The tiny model's folder with its weights replaced by a file named `weights` (never read)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors*"))
    (dst / weights).write_bytes(b"not read by the checks")
    if extra_config:
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, **extra_config}))
    return dst


def _case(name, tmp, tiny):
    """(job, extra argv, text the error must name) for the case `name`; files it needs go in `tmp`."""
    if name == "manifest missing columns":
        pq.write_table(pa.table({"path": ["a.mp4"], "label": ["real"]}), tmp / "thin.parquet")
        return dapo, ["--set", f"data.manifest={tmp / 'thin.parquet'}"], "thin.parquet"
    if name == "manifest not parquet":
        (tmp / "junk.parquet").write_text("id,path\n")
        return dapo, ["--set", f"data.manifest={tmp / 'junk.parquet'}"], "junk.parquet"
    if name == "pickled weights only":
        folder = _model_copy(tiny, tmp / "pickled", weights="pytorch_model.bin")
        return dapo, ["--set", f"model.path={folder}"], "model.allow_pickle"
    if name == "pickled weights only (sft)":
        folder = _model_copy(tiny, tmp / "pickled", weights="model.pt")
        return sft, ["--set", f"model.path={folder}"], "model.allow_pickle"
    if name == "needs trust_remote_code":
        folder = _model_copy(tiny, tmp / "remote", weights="model.safetensors",
                             extra_config={"auto_map": {"AutoModel": "modeling_evil.EvilModel"}})
        return dapo, ["--set", f"model.path={folder}"], "model.trust_remote_code"
    if name == "bad deepspeed json":
        (tmp / "ds.json").write_text('{\n  "zero_optimization": {\n    "stage": 2,,\n')
        return dapo, ["--set", f"train.deepspeed_config={tmp / 'ds.json'}"], "ds.json:3"
    if name == "config file missing":
        return dapo, ["--config", str(tmp / "absent.yaml")], "absent.yaml"
    sets = {
        "unknown key": (["train.bogus=1"], "train.bogus"),
        "wrong type": (["train.lr=fast"], "train.lr"),
        "negative lr": (["train.lr=-1e-5"], "train.lr"),
        "group size 1": (["rollout.sampling.group_size=1"], "rollout.sampling.group_size"),
        "clip_low >= 1": (["algorithm.clip_low=1.0"], "algorithm.clip_low"),
        "zero stage 4": (["train.zero_stage=4"], "train.zero_stage"),
        "moved key": (["train.algorithm=dapo"], "train.algorithm"),
        "manifest missing": ([f"data.manifest={tmp / 'absent.parquet'}"], "absent.parquet"),
        "no training rows": (["data.train_split=nosuch"], "data.train_split"),
        "model folder missing": ([f"model.path={tmp / 'no-model'}"], "no-model"),
        "max_new_tokens beyond max_model_len": (["rollout.engine=vllm", "rollout.sampling.max_new_tokens=9000"],
                                                "rollout.vllm.max_model_len"),
        "max_new_tokens beyond the model's positions": (["rollout.sampling.max_new_tokens=5000", "reward.max_len=6000"],
                                                        "rollout.sampling.max_new_tokens"),
        "every reward weight 0": (["reward.weights={format: 0, overlong: 0, accuracy: 0}"], "reward.weights"),
        "judge path missing": (["reward.weights.thinking=1", f"reward.judge.model.path={tmp / 'no-judge'}"],
                               "reward.judge.model.path"),
        "more GPUs than the cluster": (["train.use_gpu=true"], "training workers 2 x (1 CPU, 1 GPU)"),
        # The embedded Ray's one node has no custom resources: the key and that are named.
        "a custom resource no node has": (["train.resources={trainer: 1}"],
                                          "no node has the custom resource 'trainer' the training workers ask for; "
                                          "the cluster has no custom resources"),
    }
    if name == "busterx stage 3 without a judge":  # its default overrides add the thinking reward
        return busterx, [], "reward.judge.model.path"
    if name == "busterx stage 3 judge path missing":
        return busterx, ["--set", f"reward.judge.model.path={tmp / 'no-judge'}"], "no-judge"
    if name == "CLIP path missing":
        return prpo, ["--set", "reward.weights.paragraph=1", "--set", f"reward.paragraph.encoder={tmp / 'no-clip'}"], "reward.paragraph.encoder"
    overrides, named = sets[name]
    return dapo, [a for o in overrides for a in ("--set", o)], named


CASES = ["unknown key", "wrong type", "negative lr", "group size 1", "clip_low >= 1", "zero stage 4", "moved key",
         "config file missing", "bad deepspeed json", "manifest missing", "manifest missing columns",
         "manifest not parquet", "no training rows", "model folder missing", "pickled weights only",
         "pickled weights only (sft)", "needs trust_remote_code", "max_new_tokens beyond max_model_len",
         "max_new_tokens beyond the model's positions", "every reward weight 0", "judge path missing",
         "CLIP path missing", "busterx stage 3 without a judge", "busterx stage 3 judge path missing",
         "more GPUs than the cluster", "a custom resource no node has"]


@pytest.mark.parametrize("name", CASES)
def test_refused_at_start(name, base_config_dict, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the embedded Ray's plan: this machine's GPUs (none)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config_dict))
    job, argv, named = _case(name, tmp_path, tiny_model_dir)
    with pytest.raises(SystemExit) as exit_:
        job.main(["--config", str(config), "--no-eval", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert named in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not (tmp_path / "run").exists()


def test_a_sound_config_passes_without_starting_ray(base_config_dict, tiny_model_dir, tmp_path):
    raw = {**base_config_dict, "model": {**base_config_dict["model"], "path": str(
        _model_copy(tiny_model_dir, tmp_path / "pickled", weights="pytorch_model.bin")), "allow_pickle": True}}
    preflight.check(parse_config(raw))  # pickled weights, allowed
    preflight.check(parse_config(base_config_dict))
    assert not ray.is_initialized()
    assert not preflight.is_local("Qwen/Qwen2.5-VL-7B-Instruct") and preflight.is_local(str(tmp_path / "a" / "b"))
