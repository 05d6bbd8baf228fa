"""Supervised fine-tuning (full or LoRA): `python -m jobs.sft --config jobs/configs/sft.yaml [--max_samples N] [--num_epochs N] [--deepspeed FILE]`.

Targets are `<think>REASONING</think><answer>LABEL</answer>`: a row's `explanation` where the
manifest has one, else `sft.think` (`sft.answer: random` teaches only the format, as the demo's
warm-up does). `model.lora` sets rank, alpha and target modules (the job prints the share of
trainable parameters) and `model.lora.export_merged` also writes merged weights. The starting
and the final model are evaluated on `data.eval_split` (held-out loss, accuracy, F1) unless
`--no-eval`. Re-running with the same `run.output_dir` resumes.
"""

from jobs import cli


def main(argv=None) -> dict:
    p = cli.recipe_parser(__doc__.splitlines()[0])
    p.add_argument("--max_samples", type=int, metavar="N", help="train on the first N training rows only (data.max_rows)")
    p.add_argument("--num_epochs", type=int, metavar="N",
                   help="passes over the training rows (data.epochs); the run then lasts until they are used up")
    p.add_argument("--deepspeed", metavar="FILE", help="DeepSpeed config (JSON or YAML) merged over the generated one (train.deepspeed_config)")
    args = p.parse_args(argv)
    extra = ["algorithm.name=sft"]
    extra += [f"train.deepspeed_config={args.deepspeed}"] if args.deepspeed else []
    extra += [f"data.max_rows={args.max_samples}"] if args.max_samples else []
    extra += [f"data.epochs={args.num_epochs}", "train.total_steps=null"] if args.num_epochs else []
    from raytrain.recipes.runner import run_recipe  # after parsing: --help and config errors need no Ray

    cfg = cli.load(args, extra)
    return cli.placement_or_exit(args, cfg) or run_recipe(cfg, "sft", evaluate=not args.no_eval)


if __name__ == "__main__":
    main()
