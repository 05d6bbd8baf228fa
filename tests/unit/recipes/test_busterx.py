"""The pure parts of the recipes: BusterX++ stage configs and fusion rows, SFT targets, prompt modes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from raytrain.config import load_config, parse_config
from raytrain.data.batch import Prompt
from raytrain.data.pipeline import prompt_mode
from raytrain.data.sft_targets import sft_target
from raytrain.recipes.busterx import fusion_rows, stage_config, stage_steps
from rewards.answer import parse_answer
from rewards.outcome import format_reward

CONFIGS = Path(__file__).resolve().parents[3] / "jobs" / "configs"


def _pipeline(base: dict, **busterx) -> dict:
    raw = copy.deepcopy(base)
    raw["busterx"] = {"total_steps": 20, **busterx}
    return raw


def test_stage_steps_follow_the_shares(base_config_dict):
    assert stage_steps(parse_config(_pipeline(base_config_dict))) == {1: 14, 2: 1, 3: 5}  # 70/5/25
    assert stage_steps(parse_config(_pipeline(base_config_dict, shares=[1, 0, 1]))) == {1: 10, 2: 0, 3: 10}
    with pytest.raises(ValueError, match="three non-negative"):
        parse_config(_pipeline(base_config_dict, shares=[0.5, 0.5]))


def test_stage_configs_apply_settings_then_overrides_then_steps(base_config_dict, tmp_path):
    raw = _pipeline(base_config_dict, stage1={"train.lr": 0.5}, stage3={"reward.weights.hybrid": 2.0})
    cfg = parse_config(raw)
    one = stage_config(cfg, 1, "/models/start")
    assert (one.algorithm.name, one.data.mode, one.train.lr, one.train.total_steps) == ("dapo", "think", 0.5, 14)
    assert one.model.path == "/models/start" and one.run.output_dir == Path(raw["run"]["output_dir"]) / "stage1"
    three = stage_config(cfg, 3, "/models/two")
    assert (three.data.mode, three.reward.weights["hybrid"], three.train.lr) == ("random", 2.0, cfg.train.lr)
    # Stage 2 is SFT on the fusion manifest, with enough passes for its steps: 1 step x 2 workers x 2 prompts over 3 rows.
    two = stage_config(cfg, 2, "/models/one", fusion_manifest=tmp_path / "fusion.parquet", fusion_rows=3)
    assert (two.algorithm.name, two.sft.answer, two.data.mode, two.data.epochs) == ("sft", "label", None, 2)
    assert two.data.manifest == tmp_path / "fusion.parquet"
    with pytest.raises(ValueError, match="fusion manifest"):
        stage_config(cfg, 2, "/models/one")


def test_lora_pipelines_chain_through_merged_weights(base_config_dict):
    raw = _pipeline(base_config_dict)
    raw["model"]["lora"] = {"enabled": True}
    assert stage_config(parse_config(raw), 1, "/m").model.lora.export_merged


@pytest.mark.parametrize("name", ["busterx.yaml", "busterx_qwen7b.yaml"])
def test_shipped_pipeline_stages_validate(name):
    cfg = load_config(CONFIGS / name)
    for stage in (1, 3):
        assert stage_config(cfg, stage, cfg.model.path).algorithm.name == "dapo"
    assert {"hybrid", "thinking"} <= set(stage_config(cfg, 3, cfg.model.path).reward.weights)


def _record(id, label, answer, response, format_ok=True, status="ok"):
    return {"id": id, "label": label, "answer": answer, "response": response, "format_ok": format_ok, "status": status}


def test_fusion_rows_keep_correct_formatted_responses_in_both_modes():
    rows = {i: {"id": i, "path": f"/{i}.mp4", "label": "fake", "split": "test", "weight": 3.0} for i in "abcde"}
    predictions = [
        _record("a", "fake", "fake", "<think>Seams at the jaw.</think><answer>fake</answer>"),
        _record("b", "fake", "real", "<think>x</think><answer>real</answer>"),  # wrong
        _record("c", "fake", "fake", "<answer>fake</answer>", format_ok=False),  # badly formatted
        _record("d", "fake", None, "", status="unreadable"),
        _record("e", "fake", "fake", "<think></think><answer>fake</answer>"),  # no reasoning: the template
    ]
    out = fusion_rows(predictions, rows, limit=10)
    assert [(r["id"], r["mode"], r["explanation"]) for r in out] == [
        ("a-think", "think", "Seams at the jaw."), ("a-no_think", "no_think", None),
        ("e-think", "think", None), ("e-no_think", "no_think", None),
    ]
    assert all(r["split"] == "train" and r["weight"] is None and r["path"] == f"/{r['id'][0]}.mp4" for r in out)
    assert len(fusion_rows(predictions, rows, limit=1)) == 2


def _prompt(**fields) -> Prompt:
    import numpy as np

    base = dict(key="0:x", id="x", path="/x.mp4", label="fake", category="face-swap", input_ids=np.zeros(1, np.int64),
                pixel_values=np.zeros((0, 0), np.float32), grid_thw=np.zeros(3, np.int64), is_video=True)
    return Prompt(**{**base, **fields})


def test_sft_targets_use_explanations_modes_and_answer_formats(base_config_dict):
    cfg = parse_config({**base_config_dict, "sft": {"think": "Template."}})
    assert sft_target(_prompt(), cfg) == "<think>Template.</think><answer>fake</answer>"
    assert sft_target(_prompt(explanation="Jaw seam."), cfg) == "<think>Jaw seam.</think><answer>fake</answer>"
    assert sft_target(_prompt(explanation="Jaw seam.", mode="no_think"), cfg) == "<think></think><answer>fake</answer>"
    letter = parse_config({**base_config_dict, "data": {**base_config_dict["data"], "answer_format": "letter"}})
    assert sft_target(_prompt(label="real"), letter).endswith("<answer>\\boxed{A}</answer>")
    random = parse_config({**base_config_dict, "sft": {"answer": "random"}})
    answers = {sft_target(_prompt(key=f"0:{i}"), random) for i in range(20)}
    assert len(answers) == 2  # both answers, each fixed by the key
    assert sft_target(_prompt(key="0:3"), random) == sft_target(_prompt(key="0:3"), random)


def test_prompt_mode_row_over_config_and_random_by_key(base_config_dict):
    data = parse_config(base_config_dict).data
    assert prompt_mode({"key": "0:a"}, data) is None
    think = data.model_copy(update={"mode": "think"})
    assert prompt_mode({"key": "0:a"}, think) == "think"
    assert prompt_mode({"key": "0:a", "mode": "no_think"}, think) == "no_think"
    random = data.model_copy(update={"mode": "random"})
    modes = [prompt_mode({"key": f"0:{i}", "mode": None}, random) for i in range(40)]
    assert set(modes) == {"think", "no_think"}
    assert modes == [prompt_mode({"key": f"0:{i}"}, random) for i in range(40)]


def test_sft_targets_in_the_heading_form(base_config_dict):
    heading = parse_config({**base_config_dict, "data": {**base_config_dict["data"], "answer_format": "heading"},
                            "sft": {"think": "Template."}})
    target = sft_target(_prompt(explanation="**Seam**: a hard edge.\n\n**Texture**: too smooth."), heading)
    assert target == "**Seam**: a hard edge.\n\n**Texture**: too smooth.\n\n### Answer: fake"
    assert sft_target(_prompt(label="real"), heading) == "Template.\n\n### Answer: real"
    assert parse_answer(target, "heading") == "fake" and format_reward(target, "heading") == 0.0
