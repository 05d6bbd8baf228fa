"""Evaluate a detector: `python -m jobs.evaluate --model PATH_OR_NAME (--data MANIFEST | --folder DIR) --name NAME --output OUT`.

Greedy batch inference as Ray Data over rollout-engine actors. Writes `OUT/predictions.parquet`
(id, path, label, category, source, domain, status ok/unparsable/unreadable, error, raw response,
parsed answer, format and mode compliance, latency), `OUT/metrics.json` and `OUT/report.md`
(accuracy, precision, recall, F1 with fake as positive, false-negative and false-positive rates,
format and mode compliance, with intervals, overall and per category, source and domain, and the
confusion matrix). Re-running with the same OUT resumes a killed evaluation.

The seed's command lines work as written: `--tiktok DIR` is `--folder DIR`; a flat folder of clips
that are all one label takes `--label fake|real`, and one without any label is still predicted (the
report then gives the share called fake); `--data FILE.jsonl` reads the rows `jobs.prepare_data`
writes to train/val/test.jsonl (all of them evaluated); `--output FILE.json` writes the metrics to
that file and the rest to the folder beside it (FILE without `.json`); without `--output`, results go
to `runs/eval/NAME`.

`--questions FILE.jsonl` evaluates a DX-LLaVA question file (`jobs.make_questions`; images relative
to `--image-folder`, default the file's folder) and `--answers OUT.jsonl` also writes the answers in
the official fields (question_id, prompt, text, predict, label; `head_prob` with a binary head).

`--config FILE` (with `--set` overrides) takes every setting from a config and evaluates its
`model.path` on `data.eval_split`; the flags override it. Without `--config`, the defaults of
`raytrain/config.py` apply, with float32 CPU actors or, where this machine sees a GPU, bfloat16
and one GPU per actor.
"""

import shutil
from pathlib import Path

import torch

from jobs import cli
from raytrain.data.manifest import read_jsonl_manifest, write_manifest
from raytrain.data.questions import answers, read_questions, write_jsonl
from raytrain.eval.inference import FOLDER_MANIFEST, evaluate, saved_predictions
from raytrain.eval.report import METRICS

JSONL_MANIFEST = "jsonl_manifest.parquet"  # `--data FILE.jsonl` as a manifest, kept with the results


def _defaults(args) -> dict:
    gpu = torch.cuda.is_available()
    # A folder's or a JSON-lines file's rows become a manifest in the output folder.
    manifest = args.output / FOLDER_MANIFEST if args.folder else args.output / JSONL_MANIFEST if _jsonl(args) else args.data
    return {
        "run": {"name": args.name or args.output.name, "output_dir": str(args.output)},
        "model": {"path": args.model, "dtype": "bfloat16" if gpu else "float32"},
        "data": {"manifest": str(manifest)},
        "rollout": {"num_gpus": 1 if gpu else 0},
    }


def _jsonl(args) -> bool:
    return args.data is not None and args.data.suffix == ".jsonl"


def _outputs(args) -> tuple[Path | None, Path | None]:
    """The output folder and, for `--output FILE.json`, the metrics file beside it."""
    if args.output is not None and args.output.suffix == ".json":
        return args.output.with_suffix(""), args.output
    if args.output is None and args.config is None:
        return Path("runs/eval") / (args.name or Path(args.model).name), None
    return args.output, None


def main(argv=None) -> dict:
    p = cli.parser(__doc__.splitlines()[0], config_required=False)
    p.add_argument("--model", help="model folder or hub name (default: the config's model.path)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, help="Parquet manifest, or FILE.jsonl of manifest rows (jobs.prepare_data's test.jsonl) (default: the config's data.manifest)")
    source.add_argument("--folder", "--tiktok", type=Path,
                        help="folder of clips (real/ and fake/ subfolders, a path,label[,category] CSV, or clips of "
                             "one --label); every clip is evaluated")
    p.add_argument("--label", choices=["fake", "real"], help="the label of every clip of a flat --folder/--tiktok")
    source.add_argument("--questions", type=Path, help="DX-LLaVA question file (JSON lines: question_id, image, text, label)")
    p.add_argument("--image-folder", type=Path, help="folder the --questions images are relative to (default: the file's folder)")
    p.add_argument("--answers", type=Path, help="with --questions: also write the answers here (JSON lines)")
    p.add_argument("--split", help="manifest split (default: data.eval_split)")
    p.add_argument("--name", help="run name in reports and comparisons (default: the output folder's name)")
    p.add_argument("--output", type=Path, help="output folder, or FILE.json for the metrics with the rest in FILE/ "
                                               "(default: <run.output_dir>/eval, or runs/eval/NAME without --config)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--think", dest="mode", action="store_const", const="think", help="append /think to the prompt")
    mode.add_argument("--no-think", dest="mode", action="store_const", const="no_think", help="append /no_think to the prompt")
    args = p.parse_args(argv)
    if args.answers and not args.questions:
        p.error("--answers needs --questions")
    if args.output is None and args.answers:
        args.output = args.answers.with_suffix("")  # OUT.jsonl -> the folder OUT/ beside it
    if args.config is None and not (args.model and (args.data or args.folder or args.questions)):
        p.error("without --config, give --model and --data, --folder (--tiktok) or --questions")
    if args.label and not args.folder:
        p.error("--label labels the clips of --folder/--tiktok")
    args.output, metrics_file = _outputs(args)
    extra = [f"model.path={args.model}"] if args.model else []
    extra += [f"data.manifest={args.data}"] if args.data and not _jsonl(args) else []
    extra += [f"data.mode={args.mode}"] if args.mode else []
    cfg = cli.load(args, extra, _defaults(args) if args.config is None else None)
    out = args.output or Path(cfg.run.output_dir) / "eval"
    split = args.split
    if _jsonl(args):  # the file is the split: every row of it is evaluated, from a manifest kept with the results
        split, manifest = split or cfg.data.eval_split, out / JSONL_MANIFEST
        try:
            write_manifest(read_jsonl_manifest(args.data, split), manifest)
        except (OSError, ValueError) as e:
            p.exit(2, f"error: {e}\n")
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"manifest": manifest})})
    summary = evaluate(cfg, out, split=split, folder=args.folder, questions=args.questions,
                       image_folder=args.image_folder, name=args.name, label=args.label)
    if metrics_file is not None:
        shutil.copyfile(out / METRICS, metrics_file)
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
    called = summary["called_fake"]["value"]
    print(f"{'called fake':<22}{'-' if called is None else f'{called:.3f}'}")
    print(f"written to {metrics_file or out}" + (f" (predictions and report in {out})" if metrics_file else ""))
    return summary


if __name__ == "__main__":
    main()
