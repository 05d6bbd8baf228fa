"""The DX-LLaVA pipeline's stage logic (raytrain.recipes.dx_llava): each stage's settings, which stages run,
and the held-out PCR paragraph reward; no training (tests/e2e/test_dx_llava.py runs the pipeline)."""

from __future__ import annotations

import pytest

from raytrain.config import parse_config
from raytrain.recipes.dx_llava import FINAL_DIR, STAGES, paragraph_pcr, plan, stage_dir, stage_overrides


@pytest.fixture
def cfg(base_config_dict, tmp_path):
    raw = {**base_config_dict, "dx_llava": {"instruct": {"train.lr": 2.0e-5, "run.output_dir": "ignored"}}}
    return parse_config(raw)


def test_each_stage_trains_what_the_official_code_trains(cfg):
    align, instruct, prpo = (stage_overrides(cfg, s, f"/start/{s}") for s in STAGES)
    assert align["model.trainable"] == ["projector", "head"] and align["algorithm.name"] == "sft"
    assert instruct["model.trainable"] == ["projector", "head", "language_model"] and instruct["algorithm.name"] == "sft"
    assert prpo["model.trainable"] == ["language_model"] and prpo["algorithm.name"] == "prpo"
    # The official PRPO run by default: each response's paragraphs, one response per prompt, label-free.
    assert prpo["algorithm.prpo_group_by"] == "response" and prpo["rollout.sampling.group_size"] == 1
    assert prpo["algorithm.dynamic_sampling"] is False and prpo["reward.weights.paragraph"] == 1.0
    # Overrides apply; the stage's start and output folder always win.
    assert instruct["train.lr"] == 2.0e-5
    assert instruct["run.output_dir"] == str(cfg.run.output_dir / "instruct") and instruct["model.path"] == "/start/instruct"


def test_lora_stages_export_merged_weights(base_config_dict):
    lora = parse_config({**base_config_dict, "model": {**base_config_dict["model"], "lora": {"enabled": True}}})
    assert stage_overrides(lora, "align", "/m")["model.lora.export_merged"] is True


def _finish(cfg, stage):
    (stage_dir(cfg, stage) / FINAL_DIR).mkdir(parents=True)


def test_plan_skips_finished_stages_and_refuses_to_jump(cfg):
    assert plan(cfg, "all") == list(STAGES)
    assert plan(cfg, "align") == ["align"]
    with pytest.raises(SystemExit, match="stage align has not finished"):
        plan(cfg, "instruct")
    _finish(cfg, "align")
    assert plan(cfg, "all") == ["instruct", "prpo"] and plan(cfg, "instruct") == ["instruct"]
    assert plan(cfg, "align") == []  # finished: never trained again
    with pytest.raises(SystemExit, match="stage instruct has not finished"):
        plan(cfg, "prpo")
    _finish(cfg, "instruct")
    assert plan(cfg, "prpo") == ["prpo"]
    with pytest.raises(ValueError, match="stage must be one of"):
        plan(cfg, "stage9")


def test_paragraph_pcr_of_held_out_responses(cfg):
    consistent = "**Seam**: a hard seam and blending artifacts around the face.\n\n### Answer: fake"
    contradicting = "**Light**: natural, consistent lighting and authentic skin.\n\n### Answer: fake"
    predictions = [
        {"status": "ok", "response": consistent, "answer": "fake"},  # [1, 1] -> 1
        {"status": "ok", "response": contradicting, "answer": "fake"},  # [1, 0] -> 0.5
        {"status": "unparsable", "response": "Hmm, maybe it is something.", "answer": None},  # 0
        {"status": "unreadable", "response": None, "answer": None},  # not scored
    ]
    assert paragraph_pcr(predictions, cfg) == pytest.approx(0.5)
    assert paragraph_pcr(predictions[3:], cfg) is None


def test_stage_overrides_merge_into_sections(base_config_dict):
    from raytrain.recipes.dx_llava import merge_dotted

    raw = {"train": {"lr": 1.0, "total_steps": 5}, "reward": {"weights": {"format": 1.0}}}
    merge_dotted(raw, "train", {"total_steps": 2})  # as `--set dx_llava.prpo.train.total_steps=2` arrives
    merge_dotted(raw, "reward.weights", {"paragraph": 1.0})
    merge_dotted(raw, "rollout.sampling.top_p", 0.7)
    merge_dotted(raw, "reward.weights.format", 0.0)
    assert raw == {"train": {"lr": 1.0, "total_steps": 2}, "reward": {"weights": {"format": 0.0, "paragraph": 1.0}},
                   "rollout": {"sampling": {"top_p": 0.7}}}
