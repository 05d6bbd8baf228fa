"""Build a tiny random model: `python -m jobs.make_tiny_model [--family qwen2.5-vl|dx-llava|clip] --out DIR`."""

import argparse
from pathlib import Path

from raytrain.models.tiny import save_tiny_clip, save_tiny_dx_llava, save_tiny_model

# What each family's tiny model is made of (all built locally, random, with a locally trained tokenizer).
BUILDERS = {
    "qwen2.5-vl": (save_tiny_model, "tiny Qwen2.5-VL"),
    "dx-llava": (save_tiny_dx_llava, "tiny DX-LLaVA (ConvNeXt-atto tower, LLaMA, projector, binary head)"),
    # `reward.paragraph.encoder` (a transformers CLIP folder): the stand-in for PRPO's OpenCLIP ConvNeXt.
    "clip": (save_tiny_clip, "tiny CLIP (PRPO's paragraph-reward encoder)"),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, type=Path, help="output folder (a Hugging Face model folder)")
    p.add_argument("--family", choices=sorted(BUILDERS), default="qwen2.5-vl", help="model family (default qwen2.5-vl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the folder holds a model")
    args = p.parse_args(argv)
    if (args.out / "config.json").exists() and not args.force:
        print(f"{args.out} already holds a model (use --force to rebuild)")
        return
    build, what = BUILDERS[args.family]
    build(args.out, seed=args.seed)
    print(f"{what} written to {args.out}")


if __name__ == "__main__":
    main()
