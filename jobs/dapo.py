"""DAPO training: `python -m jobs.dapo --config jobs/configs/demo.yaml`.

Runs on an embedded local Ray, or on a cluster under `ray job submit`.
Re-running with the same `run.output_dir` resumes from the last checkpoint.
"""

from jobs.cli import train_main

if __name__ == "__main__":
    train_main(__doc__.splitlines()[0], "dapo")
