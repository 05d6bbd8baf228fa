"""Supervised fine-tuning on template targets: `python -m jobs.sft --config jobs/configs/demo_warmup.yaml`.

`sft.answer: label` teaches the true answers; `sft.answer: random` teaches only the
response format (the demo's warm-up before DAPO).
"""

from jobs import cli
from raytrain.launch import train


def main(argv=None) -> None:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = cli.load(args, ["train.algorithm=sft"])
    final = train(cfg)
    print(f"[sft] final weights: {final}")


if __name__ == "__main__":
    main()
