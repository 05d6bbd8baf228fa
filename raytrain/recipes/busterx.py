"""The BusterX++ three-stage pipeline (SPEC section 6, seed 000): each stage's config, and stage 2's data.

Stage 1 (70% of the steps) is DAPO in think mode with format, overlong and accuracy rewards.
Stage 2 (5%), Thinking Mode Fusion, fine-tunes on stage 1's own correct responses, each
rewritten as a `/think` example (its reasoning kept) and a `/no_think` example (empty think).
Stage 3 (25%) is DAPO with prompts randomly in either mode and the hybrid and thinking rewards
added. Every stage writes `run.output_dir/stageN/` and checkpoints there; a stage whose `final/`
exists is finished, and under LoRA the next stage starts from its merged weights. `jobs.busterx`
is the command line of `run_pipeline`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from raytrain.config import Config, parse_config, set_dotted
from raytrain.data.manifest import read_manifest, rows_to_table, write_manifest
from raytrain.eval.inference import evaluate, saved_predictions
from raytrain.recipes.runner import held_out, print_table
from raytrain.train.launch import FINAL_DIR, MERGED_DIR, train
from rewards.modes import think_content

STAGES = (1, 2, 3)
FUSION_MANIFEST = "fusion_manifest.parquet"  # under stage2/
COLLECT_DIR = "collect"  # under stage2/: stage 1's responses on the training split
REPORT = "busterx.json"  # under run.output_dir
# What makes each stage that stage; the config's `busterx.stageN` overrides come after these.
_STAGE_SETTINGS = {
    1: {"algorithm.name": "dapo", "data.mode": "think"},
    2: {"algorithm.name": "sft", "sft.answer": "label", "data.mode": None, "data.max_rows": None, "data.train_split": "train"},
    3: {"algorithm.name": "dapo", "data.mode": "random"},
}


def stage_steps(cfg: Config) -> dict[int, int]:
    """Optimizer steps of each stage: its share of `busterx.total_steps` (0 skips the stage)."""
    shares = cfg.busterx.shares
    return {stage: round(cfg.busterx.total_steps * share / sum(shares)) for stage, share in zip(STAGES, shares)}


def stage_dir(cfg: Config, stage: int) -> Path:
    return Path(cfg.run.output_dir) / f"stage{stage}"


def stage_config(cfg: Config, stage: int, model_path: str | Path, *, fusion_manifest: Path | None = None,
                 fusion_rows: int = 0) -> Config:
    """The full config of `stage`: the pipeline's config, the stage's settings, its `busterx.stageN`
    overrides, then its steps, starting weights and output folder. Stage 2 trains on
    `fusion_manifest` (`fusion_rows` rows), as many passes as its steps need."""
    raw = cfg.model_dump(mode="json")
    steps = stage_steps(cfg)[stage]
    forced = {"model.path": str(model_path), "run.output_dir": str(stage_dir(cfg, stage)),
              "run.name": f"{cfg.run.name}-stage{stage}", "train.total_steps": steps}
    if cfg.model.lora.enabled:
        forced["model.lora.export_merged"] = True  # the next stage starts from merged weights with a fresh adapter
    if stage == 2:
        if fusion_manifest is None or fusion_rows == 0:
            raise ValueError("stage 2 needs the fusion manifest of stage 1's correct responses")
        per_step = cfg.train.num_workers * cfg.train.prompts_per_worker
        forced.update({"data.manifest": str(fusion_manifest), "data.epochs": max(1, math.ceil(steps * per_step / fusion_rows))})
    for key, value in {**_STAGE_SETTINGS[stage], **getattr(cfg.busterx, f"stage{stage}"), **forced}.items():
        set_dotted(raw, key, value)
    return parse_config(raw, source=f"busterx stage {stage}")


def fusion_rows(predictions: list[dict], rows: dict[str, dict], limit: int) -> list[dict]:
    """Stage 2's training rows: up to `limit` correct, well-formatted stage-1 responses, each as a
    `/think` row (its reasoning as the explanation) and a `/no_think` row (empty think).

    `predictions` are evaluation records (`raytrain.eval.inference`); `rows` maps ids to manifest rows.
    """
    out = []
    for p in predictions:
        if len(out) >= 2 * limit:
            break
        if p["status"] != "ok" or p["answer"] != p["label"] or not p["format_ok"]:
            continue
        row = {**rows[p["id"]], "split": "train", "weight": None}
        reasoning = think_content(p["response"]) or None  # None: the `sft.think` template
        out.append({**row, "id": f"{row['id']}-think", "mode": "think", "explanation": reasoning})
        out.append({**row, "id": f"{row['id']}-no_think", "mode": "no_think", "explanation": None})
    return out


def _weights(cfg: Config, stage: int) -> Path:
    """What the next stage starts from: the export, or under LoRA the merged weights."""
    return stage_dir(cfg, stage) / (MERGED_DIR if cfg.model.lora.enabled else FINAL_DIR)


def _finished(cfg: Config, stage: int) -> bool:
    return (stage_dir(cfg, stage) / FINAL_DIR).is_dir()


def _fusion_manifest(cfg: Config, stage1_model: Path) -> tuple[Path, int]:
    """Stage 1's greedy responses on (up to 4x `fusion_samples` of) the training split, kept when
    correct and well formatted, fused into think and no-think rows: the manifest and its row count."""
    collect = cfg.busterx.fusion_samples * 4
    probe = cfg.with_model(stage1_model).model_copy(update={
        "data": cfg.data.model_copy(update={"mode": "think", "max_rows": collect}),
    })
    out = stage_dir(cfg, 2)
    evaluate(probe, out / COLLECT_DIR, split=cfg.data.train_split, name="stage 1 on the training split")
    predictions = saved_predictions(out / COLLECT_DIR)
    manifest = {r["id"]: r for r in read_manifest(cfg.data.manifest).to_pylist()}
    rows = fusion_rows(predictions, manifest, cfg.busterx.fusion_samples)
    print(f"[busterx] stage 2: {len(rows) // 2} of {len(predictions)} stage-1 responses correct and well formatted; "
          f"{len(rows)} fused examples", flush=True)
    if not rows:
        raise SystemExit(f"stage 1's model answered none of {len(predictions)} training items correctly in the "
                         "response format; train stage 1 longer (busterx.total_steps) before stage 2")
    path = out / FUSION_MANIFEST
    write_manifest(rows_to_table(rows), path)
    return path, len(rows)


def run_stage(cfg: Config, stage: int, start: Path) -> None:
    print(f"[busterx] stage {stage}: {stage_steps(cfg)[stage]} steps from {start}", flush=True)
    if stage == 2:
        manifest, count = _fusion_manifest(cfg, start)
        train(stage_config(cfg, 2, start, fusion_manifest=manifest, fusion_rows=count))
    else:
        train(stage_config(cfg, stage, start))


def evaluate_stages(cfg: Config) -> dict[str, dict]:
    """Held-out metrics of the finished stages 1 (think mode) and 3 (each mode)."""
    columns = {}
    for stage, mode in ((1, "think"), (3, "think"), (3, "no_think")):
        if not _finished(cfg, stage):
            continue
        probe = cfg.model_copy(update={"data": cfg.data.model_copy(update={"mode": mode})})
        name = f"stage {stage}" + (f" /{mode}" if stage == 3 else "")
        columns[name] = held_out(probe, stage_dir(cfg, stage) / FINAL_DIR,
                                     stage_dir(cfg, stage) / f"eval-{mode}", name, loss=False)
    return columns


def run_pipeline(cfg: Config, which: str = "all", *, evaluate: bool = True) -> dict:
    """Run stage `which` (1, 2, 3) or every unfinished stage (`all`), resuming a stopped one; a stage runs only
    once the stages before it have finished. Unless `evaluate` is off, evaluate the finished stages. Writes
    and returns `run.output_dir/busterx.json`."""
    steps = stage_steps(cfg)
    for stage in STAGES:  # every stage's config validates before anything runs
        if steps[stage] and stage != 2:
            stage_config(cfg, stage, cfg.model.path)
    wanted = STAGES if which == "all" else (int(which),)
    start = Path(cfg.model.path)
    for stage in STAGES:
        if steps[stage] == 0:
            print(f"[busterx] stage {stage}: share 0, skipped", flush=True)
            continue
        if _finished(cfg, stage):
            print(f"[busterx] stage {stage}: finished ({stage_dir(cfg, stage) / FINAL_DIR})", flush=True)
        elif stage in wanted:
            run_stage(cfg, stage, start)
        elif stage < max(wanted):
            raise SystemExit(f"stage {stage} has not finished; run --stage {stage} (or --stage all) first")
        else:
            break
        start = _weights(cfg, stage)
    report = {"steps": steps, "finished": [s for s in STAGES if _finished(cfg, s)]}
    if evaluate:
        report["held_out"] = evaluate_stages(cfg)
        print_table("busterx", report["held_out"], cfg.data.eval_split)
    Path(cfg.run.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run.output_dir) / REPORT).write_text(json.dumps(report, indent=2))
    return report
