"""The DX-LLaVA pipeline (SPEC section 7, seed 001): feature alignment, visual instruction tuning, PRPO.

Stage `align` fine-tunes only the projector and the binary head (`model.trainable: [projector, head]`;
tower and language model frozen) on the SFT targets; `instruct` also the language model, as the
official DX-LLaVA training does; `prpo` runs PRPO on the language model alone (the official run:
`algorithm.prpo_group_by: response`, one response per prompt, label-free). Each stage is this config
with the stage's settings and its `dx_llava.<stage>` overrides (dotted keys, as `--set`), the
previous stage's weights and `run.output_dir/<stage>` as its output; a stage whose `final/` exists
is finished. After each stage its held-out metrics go into `run.output_dir/dx_llava.json`: the
text answer's (accuracy, F1, false-negative rate, format compliance), the binary head's
(`head_accuracy`, `head_auc`), the SFT targets' loss, and the mean PCR paragraph reward of the
held-out responses (`paragraph_pcr`). `jobs.dx_llava` is its command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from raytrain.config import Config, parse_config, set_dotted
from raytrain.eval.inference import heldout_loss, saved_predictions
from raytrain.recipes.runner import held_out, print_table
from raytrain.train.launch import FINAL_DIR, MERGED_DIR, train
from rewards.paragraphs import paragraph_rewards, segment_paragraphs

STAGES = ("align", "instruct", "prpo")
REPORT = "dx_llava.json"  # under run.output_dir
EVAL_DIR = "eval"  # under each stage's folder
# What makes each stage that stage; the config's `dx_llava.<stage>` overrides come after these.
STAGE_SETTINGS = {
    "align": {"algorithm.name": "sft", "sft.answer": "label", "model.trainable": ["projector", "head"]},
    "instruct": {"algorithm.name": "sft", "sft.answer": "label", "model.trainable": ["projector", "head", "language_model"]},
    "prpo": {"algorithm.name": "prpo", "model.trainable": ["language_model"]},
}


def stage_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.run.output_dir) / stage


def stage_overrides(cfg: Config, stage: str, model_path: str | Path) -> dict:
    """The dotted settings that make `cfg` into `stage`'s config: the stage's own, its `dx_llava.<stage>`
    overrides, then its starting weights and output folder (and, under LoRA, a merged export for the next stage)."""
    forced = {"model.path": str(model_path), "run.output_dir": str(stage_dir(cfg, stage)),
              "run.name": f"{cfg.run.name}-{stage}"}
    if cfg.model.lora.enabled:
        forced["model.lora.export_merged"] = True
    return {**STAGE_SETTINGS[stage], **getattr(cfg.dx_llava, stage), **forced}


def merge_dotted(raw: dict, dotted: str, value) -> None:
    """`set_dotted`, except that a mapping merges into the section it names instead of replacing it: an
    override `rollout.sampling: {top_p: 0.7}` (or `--set dx_llava.prpo.train.lr=...`, which arrives as
    `train: {lr: ...}`) keeps the section's other keys."""
    target = raw
    for key in dotted.split("."):
        target = target.get(key) if isinstance(target, dict) else None
    if isinstance(value, dict) and isinstance(target, dict):
        for key, item in value.items():
            merge_dotted(raw, f"{dotted}.{key}", item)
    else:
        set_dotted(raw, dotted, value)


def stage_config(cfg: Config, stage: str, model_path: str | Path) -> Config:
    raw = cfg.model_dump(mode="json")
    for key, value in stage_overrides(cfg, stage, model_path).items():
        merge_dotted(raw, key, value)
    return parse_config(raw, source=f"dx_llava stage {stage}")


def finished(cfg: Config, stage: str) -> bool:
    return (stage_dir(cfg, stage) / FINAL_DIR).is_dir()


def weights(cfg: Config, stage: str) -> Path:
    """What the next stage starts from: the export, or under LoRA the merged weights."""
    return stage_dir(cfg, stage) / (MERGED_DIR if cfg.model.lora.enabled else FINAL_DIR)


def plan(cfg: Config, which: str) -> list[str]:
    """The stages to train now: the unfinished ones (`all`), or `which` alone once the stages before it
    have finished (SystemExit otherwise); a finished stage is never trained again."""
    if which != "all" and which not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)} or all, got {which!r}")
    wanted = STAGES if which == "all" else STAGES[: STAGES.index(which) + 1]
    missing = [s for s in wanted[:-1] if not finished(cfg, s)] if which != "all" else []
    if missing:
        raise SystemExit(f"stage {missing[0]} has not finished; run --stage {missing[0]} (or --stage all) first")
    return [s for s in wanted if not finished(cfg, s)]


def paragraph_pcr(predictions: list[dict], cfg: Config) -> float | None:
    """Mean over the readable predictions of their mean PCR paragraph reward (PRPO's prediction consistency,
    no encoder; an unparsable answer or a response without paragraphs scores 0), or None without any."""
    p = cfg.reward.paragraph
    means = []
    for r in predictions:
        if r["status"] == "unreadable":
            continue
        paragraphs = segment_paragraphs(r["response"] or "", min_chars=p.min_chars, max_paragraphs=p.max_paragraphs)
        scores = paragraph_rewards(paragraphs, r["answer"], None, None)
        means.append(sum(scores) / len(scores) if scores else 0.0)
    return sum(means) / len(means) if means else None


def evaluate_stage(cfg: Config, stage: str) -> dict:
    """Held-out metrics of a finished stage (`data.eval_split`), with the SFT targets' loss."""
    scfg = stage_config(cfg, stage, cfg.model.path)
    out = stage_dir(cfg, stage) / EVAL_DIR
    values = held_out(scfg, stage_dir(cfg, stage) / FINAL_DIR, out, stage, loss=True)
    values["paragraph_pcr"] = paragraph_pcr(saved_predictions(out), scfg)
    return values


def _load_report(cfg: Config) -> dict:
    path = Path(cfg.run.output_dir) / REPORT
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_report(cfg: Config, report: dict) -> None:
    Path(cfg.run.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run.output_dir) / REPORT).write_text(json.dumps(report, indent=2))


def run_pipeline(cfg: Config, which: str = "all", *, evaluate: bool = True) -> dict:
    """Train the stages `plan` names (resuming a stopped one), each from the previous stage's weights, and
    unless `evaluate` is off record each finished stage's held-out metrics in `run.output_dir/dx_llava.json`
    as soon as it has them (a stage trained now is evaluated again). Returns the report."""
    for stage in STAGES:  # every stage's config validates before anything runs
        stage_config(cfg, stage, cfg.model.path)
    todo = plan(cfg, which)
    report = _load_report(cfg)
    if evaluate and "start" not in report:
        report["start"] = {"loss": heldout_loss(stage_config(cfg, "align", cfg.model.path))}
        _write_report(cfg, report)
    start = Path(cfg.model.path)
    for stage in STAGES:
        if stage in todo:
            print(f"[dx_llava] {stage}: training from {start}", flush=True)
            train(stage_config(cfg, stage, start))
            report.pop(stage, None)
            shutil.rmtree(stage_dir(cfg, stage) / EVAL_DIR, ignore_errors=True)  # an earlier model's predictions
        elif finished(cfg, stage):
            print(f"[dx_llava] {stage}: finished ({stage_dir(cfg, stage) / FINAL_DIR})", flush=True)
        else:
            break
        if evaluate and stage not in report:
            report[stage] = evaluate_stage(cfg, stage)
        report["finished"] = [s for s in STAGES if finished(cfg, s)]
        _write_report(cfg, report)
        start = weights(cfg, stage)
    if evaluate:
        print_table("dx_llava", {s: report[s] for s in STAGES if s in report}, cfg.data.eval_split)
    return report
