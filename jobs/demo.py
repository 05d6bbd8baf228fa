"""The whole product on one machine: `python -m jobs.demo` (or `make demo`).

1. a tiny random Qwen2.5-VL and a synthetic real/fake video+image dataset, made locally;
2. a short SFT warm-up that teaches only the response format (random answers);
3. held-out evaluation, DAPO on local Ray (Ray Data -> rollout actor -> reward actor ->
   DeepSpeed workers -> weights back to the rollout actor), held-out evaluation again;
4. `runs/demo/report.json`, a before/after table, `runs/demo/training.png`, and the
   evaluation comparison (`runs/demo/compare/`: table, per-category plots, confusion matrices).

Finished stages are reused on a re-run; `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from jobs import compare, make_synthetic
from raytrain.config import load_config
from raytrain.eval.inference import evaluate
from raytrain.models.tiny import save_tiny_model
from raytrain.observe.curves import plot_training
from raytrain.train.launch import FINAL_DIR, train

SHOWN = ("accuracy", "precision", "recall", "f1", "false_negative_rate", "format_compliance")
EVAL_DIRS = {"before": "eval-before", "after": "eval-after"}  # under the DAPO run's output_dir


def _stage(cfg, label: str) -> Path:
    final = Path(cfg.run.output_dir) / FINAL_DIR
    if final.exists():
        print(f"[demo] {label}: reusing {final}")
        return final
    print(f"[demo] {label} ...")
    return train(cfg)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="jobs/configs/demo.yaml", help="DAPO config")
    p.add_argument("--warmup-config", default="jobs/configs/demo_warmup.yaml", help="format warm-up (SFT) config")
    p.add_argument("--out", default="runs/demo", type=Path, help="where the report goes")
    p.add_argument("--fresh", action="store_true", help="delete previous demo outputs first")
    args = p.parse_args(argv)
    start = time.time()
    warmup_cfg, dapo_cfg = load_config(args.warmup_config), load_config(args.config)
    model_dir, data_dir = Path(warmup_cfg.model.path), Path(warmup_cfg.data.manifest).parent
    if args.fresh:
        for d in (warmup_cfg.run.output_dir, dapo_cfg.run.output_dir, model_dir):
            shutil.rmtree(d, ignore_errors=True)

    if not (model_dir / "config.json").exists():
        save_tiny_model(model_dir)
    if make_synthetic.main(["--out", str(data_dir), *(["--force"] if args.fresh else [])]) != 0:
        raise SystemExit(2)

    def evaluate_model(model: Path, when: str) -> dict:
        return evaluate(dapo_cfg.with_model(model), Path(dapo_cfg.run.output_dir) / EVAL_DIRS[when], name=f"{when} DAPO")

    warm = _stage(warmup_cfg, "format warm-up (SFT, random answers)")
    before = evaluate_model(warm, "before")
    trained = _stage(dapo_cfg, "DAPO")
    after = evaluate_model(trained, "after")

    def values(summary: dict) -> dict:
        return {k: summary["overall"][k]["value"] for k in SHOWN}

    report = {
        "before": values(before),
        "after": values(after),
        "per_category": {when: {c: g["accuracy"]["value"] for c, g in s["groups"]["category"].items() if g["n"]}
                         for when, s in (("before", before), ("after", after))},
        "skipped_media": after["unreadable"],
        "minutes": round((time.time() - start) / 60, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    plot_training(Path(dapo_cfg.run.output_dir) / "metrics.jsonl", args.out / "training.png")
    compare.compare([Path(dapo_cfg.run.output_dir) / EVAL_DIRS[w] for w in ("before", "after")], args.out / "compare")

    print(f"\n{'metric':<22}{'before DAPO':>12}{'after DAPO':>12}")
    for k in SHOWN:
        print(f"{k:<22}" + "".join(f"{'-' if v is None else f'{v:.3f}':>12}" for v in (report["before"][k], report["after"][k])))
    print(f"\nreport: {args.out / 'report.json'}   curves: {args.out / 'training.png'}   "
          f"comparison: {args.out / 'compare' / 'comparison.md'}   ({report['minutes']} min)")
    return report


if __name__ == "__main__":
    main()
