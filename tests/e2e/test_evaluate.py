"""`jobs.evaluate` for real: Ray Data decoding -> engine actors -> predictions, metrics, report; and a resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from jobs import evaluate as evaluate_job
from raytrain.config import parse_config
from raytrain.data.ingest import Source, ingest, scan_sources
from raytrain.data.manifest import read_manifest, write_manifest
from raytrain.data.pipeline import prompt_mode
from raytrain.eval.inference import IDENTITY, PARTS_DIR, inference_actors, split_adapter
from raytrain.eval.report import METRICS, PREDICTIONS, REPORT
from raytrain.models.prompts import PromptBuilder

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
# Small and quick: one decode actor, one inference actor, short answers.
TINY = ["data.num_frames=8", "data.max_pixels=3136", "data.min_pixels=784", "data.decode_concurrency=1",
        "rollout.sampling.max_new_tokens=16", "evaluation.num_actors=1", "evaluation.bootstrap_resamples=200"]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_evaluate_manifest_with_unreadable_media(base_config_dict, synthetic_dir, tmp_path, ray_local):
    table = read_manifest(synthetic_dir / "manifest.parquet")
    good = [r for r in table.to_pylist() if r["split"] == "test"][:6]
    (tmp_path / "empty.mp4").write_bytes(b"")
    bad = [{**good[0], "id": "bad-empty", "path": str(tmp_path / "empty.mp4"), "label": "fake", "category": "lip-sync"},
           {**good[0], "id": "bad-missing", "path": str(tmp_path / "missing.mp4"), "label": "real", "category": "real"}]
    manifest = tmp_path / "manifest.parquet"
    write_manifest(pa.Table.from_pylist(good + bad, schema=table.schema), manifest)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(json.loads(json.dumps(base_config_dict, default=str))))
    out = tmp_path / "eval"

    summary = evaluate_job.main(["--config", str(config), "--data", str(manifest), "--output", str(out),
                                 "--name", "tiny", "--no-think", *_sets(*TINY, "evaluation.batch_size=4")])

    predictions = pq.read_table(out / PREDICTIONS).to_pylist()
    assert sorted(p["id"] for p in predictions) == sorted(r["id"] for r in good + bad)
    by_id = {p["id"]: p for p in predictions}
    for row in bad:  # reported as unreadable, with the reason, and never given an answer
        p = by_id[row["id"]]
        assert p["status"] == "unreadable" and p["error"] and p["answer"] is None and p["response"] is None
        assert (p["label"], p["category"], p["path"]) == (row["label"], row["category"], row["path"])
    readable = [by_id[r["id"]] for r in good]
    for p in readable:
        assert p["status"] == ("unparsable" if p["answer"] is None else "ok")
        assert isinstance(p["response"], str) and p["mode_ok"] is not None and p["latency_s"] > 0
        assert p["num_tokens"] > 0 and p["source"] == "synthetic"

    overall = summary["overall"]
    assert (overall["total"], overall["unreadable"], overall["n"]) == (8, 2, 6)
    assert overall["unparsable"] == sum(p["answer"] is None for p in readable)
    assert overall["accuracy"]["value"] == pytest.approx(sum(p["answer"] == p["label"] for p in readable) / 6)
    assert overall["mode_compliance"]["value"] == pytest.approx(sum(p["mode_ok"] for p in readable) / 6)
    assert sum(map(sum, overall["confusion"]["matrix"])) == 6
    categories = summary["groups"]["category"]
    assert set(categories) == {r["category"] for r in good + bad}
    assert categories["lip-sync"]["unreadable"] >= 1
    assert json.loads((out / METRICS).read_text()) == json.loads(json.dumps(summary))
    report = (out / REPORT).read_text()
    assert "## Unreadable media" in report and str(tmp_path / "missing.mp4") in report
    assert not any((out / PARTS_DIR).glob("*.parquet"))  # consolidated

    # The mode flag reached the prompt; another mode into the same folder is refused, not mixed in.
    cfg = parse_config({**base_config_dict, "data": {**base_config_dict["data"], "mode": "no_think"}})
    assert "real or fake? /no_think" in PromptBuilder(cfg.model, cfg.data).prompt_text("video", prompt_mode({"key": "0:x"}, cfg.data))
    with pytest.raises(ValueError, match="mode"):
        evaluate_job.main(["--config", str(config), "--data", str(manifest), "--output", str(out), "--think", *_sets(*TINY)])


def _parts(out: Path) -> list[dict]:
    rows = []
    for part in sorted((out / PARTS_DIR).glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def test_killed_evaluation_resumes_without_redoing_or_losing(tiny_model_dir, synthetic_dir, tmp_path, ray_local):
    # A clip folder (real/ and fake/ subfolders) with one file that is not a video.
    folder = tmp_path / "clips"
    shutil.copytree(synthetic_dir / "train", folder)
    (folder / "fake" / "lip-sync" / "broken.mp4").write_bytes(b"not a video")
    ingested = ingest(scan_sources([Source(folder, "clips", "folder")]))
    expected, rejects = ingested.table, ingested.rejects
    assert len(rejects) == 1
    out = tmp_path / "eval"
    args = ["--model", str(tiny_model_dir), "--folder", str(folder), "--output", str(out), "--name", "clips",
            *_sets(*TINY, "evaluation.batch_size=1")]

    # The first run joins this test's Ray and is killed once an inference batch is saved.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.evaluate", *args], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(list((out / PARTS_DIR).glob("*.parquet"))) < 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        log.close()
    before = {p["id"]: p for p in _parts(out)}
    assert not (out / PREDICTIONS).exists(), (tmp_path / "first.log").read_text()[-3000:]
    assert 2 <= len(before) < expected.num_rows + 1, (tmp_path / "first.log").read_text()[-3000:]

    summary = evaluate_job.main(args)

    predictions = pq.read_table(out / PREDICTIONS).to_pylist()
    ids = [p["id"] for p in predictions]
    assert len(ids) == len(set(ids)) == expected.num_rows + 1
    broken = next(p for p in predictions if p["path"].endswith("broken.mp4"))
    assert (broken["status"], broken["label"], broken["category"]) == ("unreadable", "fake", "lip-sync") and broken["error"]
    assert set(ids) == set(expected["id"].to_pylist()) | {broken["id"]}
    for id_, saved in before.items():  # saved before the kill: kept as they were, not predicted again
        assert predictions[ids.index(id_)] == saved
    assert (summary["overall"]["total"], summary["overall"]["unreadable"]) == (expected.num_rows + 1, 1)
    assert json.loads((out / IDENTITY).read_text())["data"] == str(folder.resolve())


def test_inference_actors(base_config_dict, ray_local):
    cfg = parse_config({**base_config_dict, "rollout": {**base_config_dict["rollout"], "num_actors": 3}})
    assert inference_actors(cfg, batches=10) == 3  # CPU: rollout.num_actors
    assert inference_actors(cfg, batches=2) == 2  # never an idle actor loading a model for nothing
    fixed = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"num_actors": 5})})
    assert inference_actors(fixed, batches=10) == 5
    # One actor per GPU of the cluster; a cluster without the GPUs asked for is an error, not a hang.
    gpu = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"num_gpus": 1})})
    with pytest.raises(RuntimeError, match="GPU"):
        inference_actors(gpu, batches=10)


def test_lora_export_is_evaluated_on_its_base_model(base_config_dict, tmp_path):
    cfg = parse_config(base_config_dict)
    assert split_adapter(cfg) == (cfg, None)  # a full model is served as it is
    adapter = tmp_path / "final"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/base"}))
    served, weights = split_adapter(cfg.with_model(adapter))
    assert (served.model.path, weights) == ("/models/base", str(adapter))
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="base model"):
        split_adapter(cfg.with_model(adapter))
