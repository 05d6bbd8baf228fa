"""What the end-to-end training runs share: the warm-up and DAPO configs, the records a run wrote, a run
broken on purpose while it trains (`train_breaking`) and the exactly-once check after it. Used by
tests/e2e/test_dapo.py (one local Ray) and tests/e2e/test_multinode.py (several Ray nodes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from raytrain.models.loading import load_policy
from raytrain.train.checkpoint import TrainerState, latest_checkpoint
from raytrain.train.launch import STORAGE_DIR, train
from tests.helpers.runs import metrics_records


def warm_up_config(raw: dict, manifest: Path, steps: int = 60, lr: float = 3e-3) -> dict:
    """`raw` (the tiny config dict) made the demo's warm-up: a format-only SFT (random answers) of `steps`
    steps over `manifest`. DAPO runs start from its model: they need a policy whose groups differ in
    accuracy, or dynamic sampling keeps nothing."""
    raw["data"].update(manifest=str(manifest), epochs=60)
    raw["sft"] = {"answer": "random", "think": "I look at the frames."}
    raw["algorithm"]["name"] = "sft"
    raw["train"].update(total_steps=steps, prompts_per_worker=8, lr=lr, checkpoint_every=steps)
    return raw


def dapo_config(base: dict, warm_model_dir, **train) -> dict:
    # The DAPO runs of the e2e tests: weights reach the rollout actor by broadcast over a gloo weight
    # group (the path NCCL takes on GPUs), a round's prompts go in one generate call (as set for
    # vLLM), a step runs in micro-batches of 3 sequences (ranks keep different numbers of groups, so
    # their micro-batch counts differ), under ZeRO-3 with every parameter sharded (gathered for each
    # sync and export) unless a test says otherwise. The warm-up, recipe and `ray job submit` runs use
    # the defaults: the object store, one prompt per call, one pass per step, ZeRO-2.
    return {**base, "model": {**base["model"], "path": str(warm_model_dir)},
            "rollout": {**base["rollout"], "weight_transport": "broadcast", "weight_group_timeout_s": 60.0,
                        "prompts_per_call": 2},
            "train": {**base["train"], "micro_batch_size": 3, "zero_stage": 3,
                      "zero3_param_persistence_threshold": 0, **train}}


def assert_weights_changed(start_model, final: Path, model_cfg=None) -> None:
    """The run's export differs from the model it started from in some tensor, with the same names; with
    `model_cfg` it also loads as an ordinary Hugging Face model."""
    before, after = load_file(Path(start_model) / "model.safetensors"), load_file(final / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    if model_cfg is not None:
        load_policy(model_cfg.model_copy(update={"path": str(final)}))


def assert_resumes_one_step(cfg, resumed) -> None:
    """`resumed` (`cfg` with one more step, on the same output_dir) continues from `cfg`'s last checkpoint:
    its one new step is rolled out by the checkpoint's weights and draws only prompts not drawn before."""
    state = TrainerState.load(latest_checkpoint(storage_dir(cfg)))
    assert resumed.train.total_steps == state.step + 1
    train(resumed)
    after = TrainerState.load(latest_checkpoint(storage_dir(cfg)))
    assert (after.step, after.version) == (state.step + 1, state.version + 1)
    new = metrics_records(cfg.run.output_dir)[-1]
    assert new["step"] == state.step + 1 and new["rollout_version"] == state.version
    assert set(state.consumed) < set(after.consumed)
    assert len(after.consumed) == len(set(after.consumed)) == len(state.consumed) + new["groups_drawn"]


def storage_dir(cfg) -> Path:
    return Path(cfg.run.output_dir).resolve() / STORAGE_DIR


def newest_checkpoint_step(storage: Path) -> int | None:
    """The step of the newest complete checkpoint in `storage`, None while there is none (or while one is
    still being copied in and its state is half-written)."""
    try:
        latest = latest_checkpoint(storage)
        return TrainerState.load(latest).step if latest is not None else None
    except (OSError, ValueError):
        return None


def train_breaking(cfg, breaker: Callable[[int], bool], timeout_s: float = 900) -> Path:
    """`train(cfg)` in a thread while this thread polls the run's newest complete checkpoint and calls
    `breaker(step)` with its step (from the first checkpoint on) until `breaker` returns True or the run
    ends; returns the run's final export. The breaker runs here, on the caller's thread: Ray starts a
    node (`Cluster.add_node`) only from the main thread, where it sets its signal handlers."""
    storage, outcome = storage_dir(cfg), {}

    def run() -> None:
        try:
            outcome["final"] = train(cfg)
        except BaseException as err:  # raised below, on the test's thread
            outcome["error"] = err

    # A daemon: should the breaker or the deadline fail the test, the run does not keep pytest alive.
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    deadline, broken = time.time() + timeout_s, False
    while runner.is_alive():
        if time.time() > deadline:
            raise TimeoutError(f"the run of {cfg.run.output_dir} did not end within {timeout_s:.0f} s")
        runner.join(0.1)
        step = None if broken or not runner.is_alive() else newest_checkpoint_step(storage)
        if step is not None:
            broken = breaker(step)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["final"]


def trained_every_prompt_once(cfg, steps: int) -> tuple[TrainerState, dict[int, dict]]:
    """Assert that a run broken on purpose (restarts from checkpoints) ended at `steps` with one record per
    step, in order, and every drawn prompt consumed exactly once; return its last state and each step's record.

    A resume drops the records of the steps after its checkpoint, which it trains again. Exactly once: the
    prompts the surviving steps drew (those of steps lost after the last checkpoint, or in flight at it, were
    drawn again after the restart by the step that trained them) are the consumed keys, none twice."""
    state = TrainerState.load(latest_checkpoint(storage_dir(cfg)))
    assert state.step == steps
    records = metrics_records(cfg.run.output_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    final = {r["step"]: r for r in records}
    assert sum(final[s]["groups_drawn"] for s in range(1, steps + 1)) == len(state.consumed) == len(set(state.consumed))
    return state, final
