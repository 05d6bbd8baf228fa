"""The DX-LLaVA pipeline end to end on the tiny DX-LLaVA and synthetic DF-R5-shaped images (`jobs.dx_llava`).

`make test` runs the wiring: two steps per stage, `dx_llava.json` after each stage, the stage-1 freeze,
`from_pretrained` exports, a re-run that trains and evaluates nothing, and the question files
(`jobs.make_questions`, `jobs.evaluate --questions --answers`). The training effect the issue asks
for (stage 2 F1 from <= 0.6 to >= 0.85, head accuracy >= 0.85, PRPO keeping F1 within 0.02) is the
`recipe` test (`make test-recipes`), with `jobs/configs/dx_llava.yaml` as shipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import dx_llava, evaluate, make_questions
from raytrain.config.sections import ModelConfig
from raytrain.recipes.dx_llava import REPORT, STAGE_SETTINGS, STAGES
from raytrain.train.launch import FINAL_DIR
from tests.helpers.runs import metrics_records

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "dx_llava.yaml"
METRICS = {"accuracy", "f1", "false_negative_rate", "format_compliance", "head_accuracy", "head_auc", "loss",
           "paragraph_pcr", "items"}


@pytest.fixture(scope="module")
def dx_model(tmp_path_factory) -> Path:
    from jobs import make_tiny_model

    out = tmp_path_factory.mktemp("dx-tiny")
    make_tiny_model.main(["--family", "dx-llava", "--out", str(out)])
    return out


def _dataset(out: Path, num_train: int, num_test: int) -> Path:
    from raytrain.data.ingest import Source, ingest, scan_sources
    from raytrain.data.manifest import write_manifest
    from raytrain.data.synthetic import make_synthetic_dfr5

    make_synthetic_dfr5(out, num_train=num_train, num_test=num_test, seed=0)
    ingested = ingest(scan_sources([Source(out, "llava", "synthetic")]))
    assert not ingested.rejects, ingested.rejects
    write_manifest(ingested.table, out / "manifest.parquet")
    return out / "manifest.parquet"


@pytest.fixture(scope="module")
def dx_clip(tmp_path_factory) -> Path:
    """The PRPO stage's paragraph-reward encoder, as the tiny config's comment builds it."""
    from jobs import make_tiny_model

    out = tmp_path_factory.mktemp("dx-clip")
    make_tiny_model.main(["--family", "clip", "--out", str(out)])
    return out


def _sets(model: Path, clip: Path, manifest: Path, out: Path, **extra) -> list[str]:
    values = {"model.path": model, "dx_llava.prpo.reward.paragraph.encoder": clip, "data.manifest": manifest,
              "run.output_dir": out, **extra}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _parameters(path: Path) -> dict:
    from raytrain.models.loading import load_policy

    return dict(load_policy(ModelConfig(path=str(path), dtype="float32")).named_parameters())


def test_pipeline_wiring_freeze_resume_and_question_files(dx_model, dx_clip, tmp_path, ray_local, capsys):
    manifest = _dataset(tmp_path / "data", num_train=12, num_test=6)
    out = tmp_path / "run"
    few = {f"dx_llava.{stage}.train.total_steps": 2 for stage in STAGES}
    sets = _sets(dx_model, dx_clip, manifest, out, **few, **{
        "train.prompts_per_worker": 2, "rollout.sampling.max_new_tokens": 8,
        "dx_llava.prpo.rollout.sampling.max_new_tokens": 8, "reward.max_len": 8, "reward.overlong_buffer": 4,
        "evaluation.batch_size": 6})
    report = dx_llava.main(["--config", str(CONFIG), *sets])
    saved = json.loads((out / REPORT).read_text())
    assert saved == report and saved["finished"] == list(STAGES) and saved["start"]["loss"] > 0
    for stage in STAGES:
        assert METRICS <= set(saved[stage]) and saved[stage]["items"] == 6, saved[stage]
        assert 0 <= saved[stage]["head_accuracy"] <= 1 and (out / stage / FINAL_DIR / "config.json").is_file()

    # Stage align trains only the projector and the head: the tower and the language model stay bitwise equal.
    start, align = _parameters(dx_model), _parameters(out / "align" / FINAL_DIR)
    trainable = set(STAGE_SETTINGS["align"]["model.trainable"])
    frozen = [name for name in start if name.split(".")[0] not in trainable]
    assert frozen and all(start[n].equal(align[n]) for n in frozen)
    assert any(not start[n].equal(align[n]) for n in start if n.split(".")[0] in trainable)

    # A re-run finds every stage finished and every metric recorded: it trains and evaluates nothing.
    capsys.readouterr()
    stamps = {s: (out / s / FINAL_DIR).stat().st_mtime_ns for s in STAGES}
    assert dx_llava.main(["--config", str(CONFIG), *sets]) == saved
    printed = capsys.readouterr().out
    assert all(f"[dx_llava] {s}: finished" in printed for s in STAGES) and "training from" not in printed
    assert stamps == {s: (out / s / FINAL_DIR).stat().st_mtime_ns for s in STAGES}

    # The official evaluation's files: questions from the test split, answers from the PRPO model.
    questions, answers = tmp_path / "q.jsonl", tmp_path / "answers.jsonl"
    assert make_questions.main(["--data", str(manifest), "--split", "test", "--output", str(questions)]) == 0
    summary = evaluate.main(["--config", str(CONFIG), *sets, "--model", str(out / "prpo" / FINAL_DIR),
                             "--questions", str(questions), "--answers", str(answers), "--output", str(tmp_path / "qa")])
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [a["question_id"] for a in lines] == list(range(6)) and summary["overall"]["total"] == 6
    assert all(a["predict"] in ("real", "fake", "None") and 0 <= a["head_prob"] <= 1 for a in lines)


@pytest.mark.recipe
@pytest.mark.timeout(3600)
def test_dx_llava_recipe_effect(dx_model, dx_clip, tmp_path, ray_local):
    """The issue's acceptance numbers with the shipped tiny config: instruct lifts held-out F1 from <= 0.6
    (after align) to >= 0.85 with the head's accuracy >= 0.85, and PRPO, which trains (its paragraph rewards
    differ, VCR from the tiny CLIP), keeps F1 within 0.02 while its held-out PCR paragraph reward does not fall."""
    manifest = _dataset(tmp_path / "data", num_train=96, num_test=48)
    report = dx_llava.main(["--config", str(CONFIG), *_sets(dx_model, dx_clip, manifest, tmp_path / "run")])
    steps = metrics_records(tmp_path / "run" / "prpo")
    print("PRPO steps (loss, mean paragraph reward):", [(r["loss"], r["reward/paragraph"]) for r in steps])
    assert any(r["loss"] != 0.0 for r in steps) and all(0.0 < r["reward/paragraph"] < 1.0 for r in steps)
    align, instruct, prpo = (report[s] for s in STAGES)
    print(json.dumps({s: report[s] for s in ("start", *STAGES)}, indent=2))
    assert instruct["loss"] < align["loss"] < report["start"]["loss"]
    assert align["f1"] <= 0.6 and instruct["f1"] >= 0.85 and instruct["head_accuracy"] >= 0.85
    assert prpo["f1"] >= instruct["f1"] - 0.02 and prpo["paragraph_pcr"] >= instruct["paragraph_pcr"]
