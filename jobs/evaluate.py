"""Evaluate a detector: `python -m jobs.evaluate --model PATH_OR_NAME (--data MANIFEST | --folder DIR) --name NAME --output OUT`.

Greedy batch inference as Ray Data over rollout-engine actors. Writes `OUT/predictions.parquet`
(id, path, label, category, source, domain, status ok/unparsable/unreadable, error, raw response,
parsed answer, format and mode compliance, latency), `OUT/metrics.json` and `OUT/report.md`
(accuracy, precision, recall, F1 with fake as positive, false-negative and false-positive rates,
format and mode compliance, with intervals, overall and per category, source and domain, and the
confusion matrix). Re-running with the same OUT resumes a killed evaluation.

`--questions FILE.jsonl` evaluates a DX-LLaVA question file (`jobs.make_questions`; images relative
to `--image-folder`, default the file's folder) and `--answers OUT.jsonl` also writes the answers in
the official fields (question_id, prompt, text, predict, label; `head_prob` with a binary head).

`--config FILE` (with `--set` overrides) takes every setting from a config and evaluates its
`model.path` on `data.eval_split`; the flags override it. Without `--config`, the defaults of
`raytrain/config.py` apply, with float32 CPU actors or, where this machine sees a GPU, bfloat16
and one GPU per actor.
"""

from pathlib import Path

import torch

from jobs import cli
from raytrain.data.questions import answers, read_questions, write_jsonl
from raytrain.eval.inference import FOLDER_MANIFEST, evaluate, saved_predictions


def _defaults(args) -> dict:
    gpu = torch.cuda.is_available()
    return {
        "run": {"name": args.name or args.output.name, "output_dir": str(args.output)},
        "model": {"path": args.model, "dtype": "bfloat16" if gpu else "float32"},
        "data": {"manifest": str(args.data or args.output / FOLDER_MANIFEST)},
        "rollout": {"num_gpus": 1 if gpu else 0},
    }


def main(argv=None) -> dict:
    p = cli.parser(__doc__.splitlines()[0], config_required=False)
    p.add_argument("--model", help="model folder or hub name (default: the config's model.path)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="manifest to evaluate (default: the config's data.manifest)")
    source.add_argument("--folder", type=Path, help="folder of clips (real/ and fake/ subfolders or a path,label[,category] CSV); every clip is evaluated")
    source.add_argument("--questions", type=Path, help="DX-LLaVA question file (JSON lines: question_id, image, text, label)")
    p.add_argument("--image-folder", type=Path, help="folder the --questions images are relative to (default: the file's folder)")
    p.add_argument("--answers", type=Path, help="with --questions: also write the answers here (JSON lines)")
    p.add_argument("--split", help="manifest split (default: data.eval_split)")
    p.add_argument("--name", help="run name in reports and comparisons (default: the output folder's name)")
    p.add_argument("--output", type=Path, help="output folder (default: <run.output_dir>/eval)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--think", dest="mode", action="store_const", const="think", help="append /think to the prompt")
    mode.add_argument("--no-think", dest="mode", action="store_const", const="no_think", help="append /no_think to the prompt")
    args = p.parse_args(argv)
    if args.answers and not args.questions:
        p.error("--answers needs --questions")
    if args.output is None and args.answers:
        args.output = args.answers.with_suffix("")  # OUT.jsonl -> the folder OUT/ beside it
    if args.config is None and not (args.model and (args.data or args.folder or args.questions) and args.output):
        p.error("without --config, give --model, --data, --folder or --questions, and --output")
    extra = [f"model.path={args.model}"] if args.model else []
    extra += [f"data.manifest={args.data}"] if args.data else []
    extra += [f"data.mode={args.mode}"] if args.mode else []
    cfg = cli.load(args, extra, _defaults(args) if args.config is None else None)
    out = args.output or Path(cfg.run.output_dir) / "eval"
    summary = evaluate(cfg, out, split=args.split, folder=args.folder, questions=args.questions,
                       image_folder=args.image_folder, name=args.name)
    if args.answers:
        by_id = {r["id"]: r for r in saved_predictions(out)}
        write_jsonl(answers(read_questions(args.questions), by_id, summary["model"]), args.answers)
        print(f"answers written to {args.answers}")
    overall = summary["overall"]
    print(f"{summary['name']}: {overall['total']} items, {overall['n']} scored, {overall['unreadable']} unreadable, "
          f"{overall['unparsable']} unparsable")
    for metric in ("accuracy", "precision", "recall", "f1", "false_negative_rate", "false_positive_rate",
                   "format_compliance", "mode_compliance"):
        value = (overall.get(metric) or {}).get("value")
        print(f"{metric:<22}{'-' if value is None else f'{value:.3f}'}")
    print(f"written to {out}")
    return summary


if __name__ == "__main__":
    main()
