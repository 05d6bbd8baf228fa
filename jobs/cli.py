"""Command-line plumbing shared by the jobs: `--config FILE` plus `--set dotted.key=value` overrides,
validated into a config or a clear error (exit 2); the training jobs' common entry point."""

from __future__ import annotations

import argparse
import copy
import sys
from typing import NoReturn

from raytrain.config import Config, ConfigError, apply_overrides, load_config, parse_config


def parser(description: str, *, config_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=config_required, help="YAML config (see jobs/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.total_steps=10 (repeatable)")
    return p


def recipe_parser(description: str) -> argparse.ArgumentParser:
    p = parser(description)
    p.add_argument("--no-eval", action="store_true",
                   help="skip evaluating the starting and the final model on data.eval_split")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and each role's CPUs and GPUs against what the cluster has, then exit")
    return p


def refuse(error: Exception) -> NoReturn:
    """Stop a job on bad input: one line naming the key or file, exit code 2, no traceback."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


def placement_or_exit(args: argparse.Namespace, cfg: Config, stages: dict[str, Config] | None = None) -> dict | None:
    """Before a training job starts: under `--dry-run`, print the resolved config and the placement of
    each of its `stages` (default: `cfg` alone) and return it; else run the preflight checks
    (`raytrain.recipes.preflight`: model folders, manifest, placement), refusing a run that would fail
    later (exit 2, one line naming the key or file) before any Ray starts."""
    import yaml

    from raytrain.cluster import planned_nodes
    from raytrain.config import placement
    from raytrain.recipes import preflight
    from raytrain.train.algorithms import ALGORITHMS

    stages = stages or {"run": cfg}
    if not args.dry_run:
        try:
            preflight.check(cfg, stages)
        except (preflight.PreflightError, placement.PlacementError) as e:
            refuse(e)
        return None
    print("# resolved config\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    nodes = planned_nodes(cfg.cluster)
    report = {}
    for name, stage in stages.items():
        plan = placement.roles(stage, ALGORITHMS[stage.algorithm.name].needs_rollouts)
        print(f"\nplacement ({name}):\n{placement.describe(plan, nodes)}")
        report[name] = {"roles": [vars(r) for r in plan], "fits": not placement.shortfalls(plan, nodes)}
    return {"dry_run": report, "nodes": nodes}


def load(args: argparse.Namespace, extra: list[str] = (), defaults: dict | None = None) -> Config:
    """The validated config (from `defaults`, a plain config dict, when no `--config` is given),
    or exit 2 with a message that names every bad key."""
    try:
        if args.config is None:
            return parse_config(apply_overrides(copy.deepcopy(defaults), [*args.set, *extra]), source="defaults")
        return load_config(args.config, [*args.set, *extra])
    except ConfigError as e:
        refuse(e)


def train_main(description: str, algorithm: str, argv=None, extra: list[str] = (), tag: str | None = None) -> dict:
    """Entry point of a training job: parse, validate, evaluate, train (or resume), evaluate."""
    from raytrain.recipes.runner import run_recipe  # after parsing: --help and config errors need no Ray

    args = recipe_parser(description).parse_args(argv)
    cfg = load(args, [f"algorithm.name={algorithm}", *extra])
    return placement_or_exit(args, cfg) or run_recipe(cfg, tag or algorithm, evaluate=not args.no_eval)
