"""The recipe runner: evaluate the starting model, train (or resume), evaluate the result, print both side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from raytrain.config import Config
from raytrain.eval.inference import evaluate, heldout_loss
from raytrain.train.algorithms import ALGORITHMS
from raytrain.train.launch import train

# Shown side by side after a recipe, from the evaluation summaries (`raytrain.eval.inference.evaluate`).
SHOWN = ("accuracy", "f1", "false_negative_rate", "format_compliance", "mode_compliance")
HEAD_SHOWN = ("head_accuracy", "head_auc")  # a binary head's own (DX-LLaVA), when the model has one
REPORT = "recipe.json"  # under run.output_dir


def held_out(cfg: Config, model: str | Path, out: Path, name: str, *, loss: bool) -> dict:
    """Held-out metrics of `model` on `data.eval_split` (predictions and report in `out`); with `loss`
    also the mean token NLL of the SFT targets."""
    cfg = cfg.with_model(model)
    summary = evaluate(cfg, out, name=name)
    values = {k: summary["overall"][k]["value"] for k in SHOWN}
    values.update({k: summary["overall"][k]["value"] for k in HEAD_SHOWN if k in summary["overall"]})
    values["items"] = summary["overall"]["accuracy"]["n"]
    if loss:
        values["loss"] = heldout_loss(cfg)
    return values


def print_table(tag: str, columns: dict[str, dict], split: str) -> None:
    """Metrics (rows) of each evaluated model (columns), as a recipe prints them; tests read these lines."""
    rows = [k for k in (*SHOWN, *HEAD_SHOWN, "paragraph_pcr", "loss") if any(c.get(k) is not None for c in columns.values())]
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
    out = Path(cfg.run.output_dir)
    loss = not ALGORITHMS[cfg.algorithm.name].needs_rollouts  # a supervised run: its targets have a held-out loss
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
