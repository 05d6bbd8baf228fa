"""The DX-LLaVA pipeline: `python -m jobs.dx_llava --config jobs/configs/dx_llava.yaml --stage align|instruct|prpo|all`.

Stage align: SFT of the projector and the binary head (tower and language model frozen). Stage
instruct: SFT of projector, head and language model (the official DX-LLaVA training). Stage prpo:
PRPO on the language model (official: each response's paragraphs, one response per prompt). Each
stage's settings are config (`dx_llava` section); each writes `run.output_dir/<stage>/` (weights in
`final/`) and checkpoints there; a stage whose `final/` exists is finished. `--stage all` runs the
unfinished stages (resuming a stopped one); `--stage NAME` runs that stage once the stages before it
are finished. After each stage its held-out metrics (text answer, binary head, target loss, PCR
paragraph reward) go into `run.output_dir/dx_llava.json`, unless `--no-eval`.
"""

from jobs import cli


def main(argv=None) -> dict:
    p = cli.recipe_parser(__doc__.splitlines()[0])
    p.add_argument("--stage", choices=["align", "instruct", "prpo", "all"], default="all", help="stage to run (default: all)")
    args = p.parse_args(argv)
    cfg = cli.load(args)
    from raytrain.recipes.dx_llava import run_pipeline  # after parsing: --help and config errors need no Ray

    return cli.placement_or_exit(args, cfg) or run_pipeline(cfg, args.stage, evaluate=not args.no_eval)


if __name__ == "__main__":
    main()
