"""DAPO training: `python -m jobs.dapo --config jobs/configs/dapo_tiny.yaml`.

Runs on an embedded local Ray, or on a cluster under `ray job submit`.
Re-running with the same `run.output_dir` resumes from the last checkpoint.
"""

from jobs import cli
from raytrain.launch import train


def main(argv=None) -> None:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = cli.load(args, ["train.algorithm=dapo"])
    final = train(cfg)
    print(f"[dapo] final weights: {final}")


if __name__ == "__main__":
    main()
