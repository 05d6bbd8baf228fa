"""`python -m jobs.<name> --dry-run` on every shipped GPU config (no GPU here), and a run the cluster
cannot hold refused at start, before Ray starts any actor."""

from __future__ import annotations

import pytest
import yaml

from jobs import busterx, dapo, prpo, sft
from raytrain.config import load_config
from tests.unit.config.test_config import CONFIG_FILES

JOBS = {"sft": sft, "dapo": dapo, "prpo": prpo}
GPU_CONFIGS = [p for p in CONFIG_FILES if yaml.safe_load(p.read_text()).get("train", {}).get("use_gpu")]


def _job(path):
    return busterx if path.name.startswith("busterx") else JOBS[load_config(path).algorithm.name]


def test_the_gpu_configs_are_found():
    assert {"sft_1gpu.yaml", "dapo_1gpu.yaml", "dapo_4gpu_zero2.yaml", "dapo_qwen7b.yaml"} <= {p.name for p in GPU_CONFIGS}


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_dry_run_prints_the_placement_without_a_gpu(path, capsys):
    cfg = load_config(path)
    report = _job(path).main(["--config", str(path), "--dry-run"])
    out = capsys.readouterr().out
    resolved = out.split("# resolved config\n")[1].split("\nplacement (")[0]
    assert yaml.safe_load(resolved)["run"] == cfg.run.model_dump(mode="json")  # the resolved config
    for stage in report["dry_run"].values():
        workers = stage["roles"][0]
        assert (workers["name"], workers["count"]) == ("training workers", cfg.train.num_workers)
        asked = sum(r["count"] * r["gpus"] for r in stage["roles"])
        assert asked >= 1 and not stage["fits"]  # this machine has no GPU
    assert out.count("placement (") == len(report["dry_run"]) and "fits: NO:" in out and "total" in out


def test_a_run_the_cluster_cannot_hold_is_refused_at_start(base_config_dict, tmp_path, ray_local, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(base_config_dict))
    for override, asked in (("train.num_workers=20", "22.5 CPUs asked, the cluster has 8"), ("train.use_gpu=true", "2 GPUs asked, the cluster has 0")):
        with pytest.raises(SystemExit) as exit_:
            dapo.main(["--config", str(config), "--set", override, "--no-eval"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, err
        assert "the cluster cannot hold this run" in err and asked in err and "rollout engines 1 x (1 CPU, 0 GPU)" in err
    assert not (tmp_path / "run").exists()  # nothing started
    report = dapo.main(["--config", str(config), "--dry-run"])  # the tiny run fits the tests' 8-CPU Ray
    assert report["dry_run"]["run"]["fits"] and report["nodes"][0]["CPU"] == 8
