"""Command-line plumbing shared by the jobs: `--config FILE` plus `--set dotted.key=value` overrides,
and the recipe runner: evaluate the starting model, train, evaluate the result, print both."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

from raytrain.config import Config, ConfigError, apply_overrides, load_config, parse_config

# Shown side by side after a recipe, from the evaluation summaries (`raytrain.eval.inference.evaluate`).
SHOWN = ("accuracy", "f1", "false_negative_rate", "format_compliance", "mode_compliance")
REPORT = "recipe.json"  # under run.output_dir


def parser(description: str, *, config_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=config_required, help="YAML config (see jobs/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.total_steps=10 (repeatable)")
    return p


def recipe_parser(description: str) -> argparse.ArgumentParser:
    p = parser(description)
    p.add_argument("--no-eval", action="store_true",
                   help="skip evaluating the starting and the final model on data.eval_split")
    return p


def load(args: argparse.Namespace, extra: list[str] = (), defaults: dict | None = None) -> Config:
    """The validated config (from `defaults`, a plain config dict, when no `--config` is given),
    or exit 2 with a message that names every bad key."""
    try:
        if args.config is None:
            return parse_config(apply_overrides(copy.deepcopy(defaults), [*args.set, *extra]), source="defaults")
        return load_config(args.config, [*args.set, *extra])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def held_out(cfg: Config, model: str | Path, out: Path, name: str, *, loss: bool) -> dict:
    """Held-out metrics of `model` on `data.eval_split` (predictions and report in `out`); with `loss`
    also the mean token NLL of the SFT targets."""
    from raytrain.eval.inference import evaluate, heldout_loss

    cfg = cfg.with_model(model)
    summary = evaluate(cfg, out, name=name)
    values = {k: summary["overall"][k]["value"] for k in SHOWN}
    values["items"] = summary["overall"]["accuracy"]["n"]
    if loss:
        values["loss"] = heldout_loss(cfg)
    return values


def print_table(tag: str, columns: dict[str, dict], split: str) -> None:
    """Metrics (rows) of each evaluated model (columns), as a recipe prints them; tests read these lines."""
    rows = [k for k in (*SHOWN, "loss") if any(c.get(k) is not None for c in columns.values())]
    title = f"[{tag}] held-out ({split} split)"
    label = max(len(title), *(len(f"[{tag}] {k}") for k in rows)) + 2
    width = max(10, *(len(c) + 2 for c in columns))
    print("\n" + title.ljust(label) + "".join(f"{c:>{width}}" for c in columns))
    for k in rows:
        cells = [columns[c].get(k) for c in columns]
        print(f"[{tag}] {k}".ljust(label) + "".join(f"{'-' if v is None else f'{v:.4f}':>{width}}" for v in cells))


def run_recipe(cfg: Config, tag: str, *, evaluate: bool = True) -> dict:
    """Train (or resume) `cfg`; unless `evaluate` is off, evaluate the starting and the final model on the
    held-out split (accuracy, F1, compliance; the SFT loss for SFT) and print them side by side.
    Writes `run.output_dir/recipe.json`; returns it."""
    from raytrain.train.launch import train

    out = Path(cfg.run.output_dir)
    loss = cfg.algorithm.name == "sft"
    report: dict = {"final": None}
    if evaluate:
        report["start"] = held_out(cfg, cfg.model.path, out / "eval-start", "start", loss=loss)
    final = train(cfg)
    report["final_model"] = str(final)
    if evaluate:
        shutil.rmtree(out / "eval-final", ignore_errors=True)  # a previous final model's predictions
        report["final"] = held_out(cfg, final, out / "eval-final", "final", loss=loss)
        print_table(tag, {"start": report["start"], "final": report["final"]}, cfg.data.eval_split)
    (out / REPORT).write_text(json.dumps(report, indent=2))
    print(f"[{tag}] final weights: {final}", flush=True)
    return report


def train_main(description: str, algorithm: str, argv=None, extra: list[str] = (), tag: str | None = None) -> dict:
    """Entry point of a training job: parse, validate, evaluate, train (or resume), evaluate."""
    args = recipe_parser(description).parse_args(argv)
    cfg = load(args, [f"algorithm.name={algorithm}", *extra])
    return run_recipe(cfg, tag or algorithm, evaluate=not args.no_eval)
