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

from jobs import cli
from raytrain.config import ConfigError


def main(argv=None) -> dict:
    p = cli.recipe_parser(__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["1", "2", "3", "all"], default="all", help="stage to run (default: all)")
    args = p.parse_args(argv)
    cfg = cli.load(args)
    from raytrain.recipes.busterx import STAGES, run_pipeline, stage_config, stage_steps  # after parsing: no Ray for --help

    # Stage 2 trains on stage 1's answers; its placement (training workers alone) does not depend on which.
    try:
        stages = {f"stage {s}": stage_config(cfg, s, cfg.model.path, fusion_manifest=cfg.data.manifest, fusion_rows=1)
                  for s in STAGES if stage_steps(cfg)[s] and (args.stage == "all" or int(args.stage) == s)}
    except ConfigError as e:  # a stage's overrides that do not validate (stage 3's thinking reward without a judge)
        cli.refuse(e)
    return cli.placement_or_exit(args, cfg, stages) or run_pipeline(cfg, args.stage, evaluate=not args.no_eval)


if __name__ == "__main__":
    main()
