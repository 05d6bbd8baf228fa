"""Build the tiny random Qwen2.5-VL: `python -m jobs.make_tiny_model --out DIR`."""

import argparse
from pathlib import Path

from raytrain.models.tiny import save_tiny_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, type=Path, help="output folder (a Hugging Face model folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the folder holds a model")
    args = p.parse_args(argv)
    if (args.out / "config.json").exists() and not args.force:
        print(f"{args.out} already holds a model (use --force to rebuild)")
        return
    save_tiny_model(args.out, seed=args.seed)
    print(f"tiny Qwen2.5-VL written to {args.out}")


if __name__ == "__main__":
    main()
