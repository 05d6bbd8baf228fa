"""Evaluate a policy on a held-out split: `python -m jobs.evaluate --config FILE [--model PATH] [--output DIR]`.

Writes `OUT/metrics.json` (accuracy, precision, recall, F1 with fake as positive,
false-negative rate, format compliance; overall and per category) and
`OUT/predictions.parquet` (one row per item with the raw response).
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs import cli
from raytrain.evaluation import evaluate


def main(argv=None) -> dict:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder or hub name (default: the config's model.path)")
    p.add_argument("--split", help="manifest split (default: data.eval_split)")
    p.add_argument("--output", type=Path, help="output folder (default: <run.output_dir>/eval)")
    args = p.parse_args(argv)
    cfg = cli.load(args, [f"model.path={args.model}"] if args.model else [])
    result = evaluate(cfg, split=args.split)
    out = args.output or Path(cfg.run.output_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    summary = {k: result[k] for k in ("metrics", "per_category", "skipped")}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    pq.write_table(pa.Table.from_pylist(result["predictions"]), out / "predictions.parquet")
    for k, v in result["metrics"].items():
        print(f"{k:<22}{v:.3f}" if isinstance(v, float) else f"{k:<22}{v}")
    print(f"written to {out}")
    return summary


if __name__ == "__main__":
    main()
