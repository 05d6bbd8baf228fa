"""DAPO training: `python -m jobs.dapo --config jobs/configs/demo.yaml`.

Runs on an embedded local Ray, or on a cluster under `ray job submit`. The starting and the
final model are evaluated on `data.eval_split` unless `--no-eval`. Re-running with the same
`run.output_dir` resumes from the last checkpoint.
"""

from jobs.cli import train_main


def main(argv=None) -> dict:
    return train_main(__doc__.splitlines()[0], "dapo", argv)


if __name__ == "__main__":
    main()
