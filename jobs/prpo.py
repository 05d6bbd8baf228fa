"""PRPO, paragraph-level policy optimization: `python -m jobs.prpo --config jobs/configs/prpo.yaml`.

The DAPO machinery with the `prpo` advantage estimator (SPEC section 5): each paragraph of a
response gets its own advantage from paragraph rewards (visual and prediction consistency),
pooled over the prompt's G responses and assigned to the paragraph's tokens.
`algorithm.prpo_outcome_weight` mixes in the outcome reward (0: the label-free paper). The
starting and the final model are evaluated on `data.eval_split` unless `--no-eval`.
"""

from jobs.cli import train_main


def main(argv=None) -> dict:
    return train_main(__doc__.splitlines()[0], "prpo", argv)


if __name__ == "__main__":
    main()
