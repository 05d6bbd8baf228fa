"""Write DX-LLaVA evaluation questions: `python -m jobs.make_questions --data MANIFEST --split test --output FILE.jsonl`.

One JSON line per image of the split, as the official PRPO evaluation reads them: `question_id`,
`image`, `text` (`<image>` and the question), `label`, plus the manifest `id` and `domain`.
`jobs.evaluate --questions FILE.jsonl --answers OUT.jsonl` answers them. Videos are left out
(DX-LLaVA reads images). `--max N` keeps a seeded pick of N; `--image-root DIR` writes image paths
relative to DIR (the official `--image-folder`) instead of the manifest's paths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raytrain.data.manifest import read_manifest
from raytrain.data.questions import DX_LLAVA_QUESTION, questions_from_rows, write_jsonl
from raytrain.data.splits import stable_sample


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.make_questions", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, metavar="MANIFEST", help="manifest (jobs.prepare_data)")
    p.add_argument("--split", default="test", help="manifest split (default: test)")
    p.add_argument("--output", type=Path, required=True, metavar="FILE.jsonl", help="question file to write")
    p.add_argument("--question", default=DX_LLAVA_QUESTION, help="the question asked of every image")
    p.add_argument("--max", type=int, metavar="N", help="at most N questions (a seeded, stable pick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max pick (default 0)")
    p.add_argument("--image-root", type=Path, metavar="DIR", help="write image paths relative to DIR")
    args = p.parse_args(argv)
    try:
        rows = [r for r in read_manifest(args.data).to_pylist() if r["split"] == args.split]
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = [r for r in rows if r["media"] == "image"]
    if not images:
        print(f"error: {args.data} has no image in split {args.split!r}", file=sys.stderr)
        return 2
    if args.max is not None:
        images = sorted(stable_sample(images, args.max, seed=args.seed), key=lambda r: r["path"])
    questions = questions_from_rows(images, args.question, args.image_root)
    write_jsonl(questions, args.output)
    left_out = f" ({len(rows) - len(images)} videos left out)" if len(rows) > len(images) else ""
    print(f"wrote {len(questions)} questions to {args.output}{left_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
