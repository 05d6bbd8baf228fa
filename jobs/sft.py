"""Supervised fine-tuning on template targets: `python -m jobs.sft --config jobs/configs/demo_warmup.yaml`.

`sft.answer: label` teaches the true answers; `sft.answer: random` teaches only the
response format (the demo's warm-up before DAPO). Resumes like `jobs.dapo`.
"""

from jobs.cli import train_main

if __name__ == "__main__":
    train_main(__doc__.splitlines()[0], "sft")
