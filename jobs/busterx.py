"""The BusterX++ three-stage pipeline: `python -m jobs.busterx --config jobs/configs/busterx.yaml --stage 1|2|3|all`.

Stage 1: DAPO in think mode (format + overlong + accuracy). Stage 2: SFT on stage 1's own
correct responses on the training split, each rewritten as a `/think` and a `/no_think`
example. Stage 3: DAPO with prompts randomly `/think` or `/no_think`, hybrid and thinking
rewards added. Shares of `busterx.total_steps` (70/5/25) and per-stage settings are config
(`busterx` section). Every stage writes `run.output_dir/stageN/` and checkpoints there; a stage
whose `final/` exists is finished. `--stage all` runs the unfinished stages (resuming a
stopped one); `--stage N` runs stage N once the stages before it are finished. Then the
finished stages are evaluated on `data.eval_split`: stage 1 in think mode, stage 3 in both
modes (accuracy and mode compliance), unless `--no-eval`.
"""

from __future__ import annotations

import json
from pathlib import Path

from jobs import cli
from raytrain.recipes.busterx import STAGES, fusion_rows, stage_config, stage_dir, stage_steps
from raytrain.config import Config
from raytrain.train.launch import FINAL_DIR, MERGED_DIR, train
from raytrain.data.manifest import read_manifest, rows_to_table, write_manifest

FUSION_MANIFEST = "fusion_manifest.parquet"  # under stage2/
COLLECT_DIR = "collect"  # under stage2/: stage 1's responses on the training split
REPORT = "busterx.json"  # under run.output_dir


def _weights(cfg: Config, stage: int) -> Path:
    """What the next stage starts from: the export, or under LoRA the merged weights."""
    return stage_dir(cfg, stage) / (MERGED_DIR if cfg.model.lora.enabled else FINAL_DIR)


def _finished(cfg: Config, stage: int) -> bool:
    return (stage_dir(cfg, stage) / FINAL_DIR).is_dir()


def _fusion_manifest(cfg: Config, stage1_model: Path) -> tuple[Path, int]:
    """Stage 1's greedy responses on (up to 4x `fusion_samples` of) the training split, kept when
    correct and well formatted, fused into think and no-think rows: the manifest and its row count."""
    from raytrain.eval.inference import evaluate, saved_predictions

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
        columns[name] = cli.held_out(probe, stage_dir(cfg, stage) / FINAL_DIR,
                                     stage_dir(cfg, stage) / f"eval-{mode}", name, loss=False)
    return columns


def main(argv=None) -> dict:
    p = cli.recipe_parser(__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["1", "2", "3", "all"], default="all", help="stage to run (default: all)")
    args = p.parse_args(argv)
    cfg = cli.load(args)
    steps = stage_steps(cfg)
    for stage in STAGES:  # every stage's config validates before anything runs
        if steps[stage] and stage != 2:
            stage_config(cfg, stage, cfg.model.path)
    wanted = STAGES if args.stage == "all" else (int(args.stage),)
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
    if not args.no_eval:
        report["held_out"] = evaluate_stages(cfg)
        cli.print_table("busterx", report["held_out"], cfg.data.eval_split)
    Path(cfg.run.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run.output_dir) / REPORT).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
