"""ZeRO-3 in the worker's step (raytrain.train.step), on two gloo ranks started with torch.multiprocessing
(no Ray: the unit under test is one DeepSpeed step and the weight gather after it).

The ranks' micro-batches mix images and videos differently (rank 0: two images, then one; rank 1:
a video with an image, then nothing, so it adds a padding pass). The model's own forward would
call the vision tower once on rank 0 and twice on rank 1, and ZeRO-3's per-module parameter
gathers would deadlock; the worker must take the same step as under ZeRO-2 and as one process
without DeepSpeed, and gather the same weights for the engines and the export. ZeRO-0 (no sharding: whole
gradients all-reduced once, at the step) takes the same step too."""

from __future__ import annotations

import os
import queue
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from raytrain.config import parse_config
from tests.helpers.train_batches import rank_batch

RUNS = [("full", 0), ("full", 2), ("full", 3), ("lora", 0), ("lora", 2), ("lora", 3)]  # (fine-tuning, ZeRO stage)
DEADLOCK_S = 300


def _config(raw: dict, tuning: str, stage: int):
    lora = {"enabled": tuning == "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    return parse_config({**raw, "model": {**raw["model"], "lora": lora}, "train": {**raw["train"], "zero_stage": stage}})


def _worker(rank: int, world: int, port: int, raw: dict, prompts, out: Path, results) -> None:
    import deepspeed
    import torch.distributed as dist

    from raytrain.models.loading import export_weights, load_family, load_policy, sync_state
    from raytrain.train.algorithms import ALGORITHMS
    from raytrain.train.policy_sync import gathered_weights
    from raytrain.train.step import deepspeed_config, sum_across_ranks, train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    for tuning, stage in RUNS:
        cfg = _config(raw, tuning, stage)
        family = load_family(cfg.model)
        (padding,) = family.padding_batch().micro_batches(1, family.collate)
        torch.manual_seed(0)  # the same fresh adapter in every LoRA run
        model = load_policy(cfg.model)
        # SGD: the update is the (clipped) gradient itself, comparable between runs; a first Adam step
        # is lr * sign(gradient) wherever the gradient is far above eps, and ill-conditioned where it is not.
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg))
        batch = rank_batch(prompts, rank, seed=1)
        mask = batch.per_token["loss_mask"]
        tokens, seqs = sum_across_ranks([float(mask.sum()), float((mask.sum(-1) > 0).sum())])
        stats = train_step(cfg, ALGORITHMS[cfg.algorithm.name], family, engine, None, batch, tokens, seqs, world, padding)
        gathered = gathered_weights(engine, cfg)
        if rank == 0:
            export_weights(engine.module, family.processor, out / f"{tuning}-{stage}", gathered)
            # As numpy: torch's queue would share tensor memory that dies with this process.
            results.put((tuning, stage, stats["loss"], {k: v.numpy() for k, v in sync_state(engine.module, gathered).items()}))
        dist.barrier()
        del engine, optimizer, model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def steps(make_config_dict, media_prompts, tmp_path_factory):
    """The base config, the exports' folder, and {(tuning, stage): (rank 0's loss, the gathered
    policy state)} after one step on two ranks."""
    raw = make_config_dict(tmp_path_factory.mktemp("zero3-run"))
    # 0: every parameter sharded, as a 7B model's are (DeepSpeed keeps small ones whole by default).
    raw["train"].update(micro_batch_size=2, lr=1.0, zero3_param_persistence_threshold=0)
    out = tmp_path_factory.mktemp("zero3-exports")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, raw, media_prompts, out, results)) for rank in range(2)]
    for p in procs:
        p.start()
    states = {}
    try:
        for _ in RUNS:
            try:
                tuning, stage, loss, state = results.get(timeout=DEADLOCK_S)
            except queue.Empty:
                pytest.fail(f"the ranks deadlocked: no step finished in {DEADLOCK_S} s")
            states[tuning, stage] = (loss, {k: torch.from_numpy(v) for k, v in state.items()})
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return raw, out, states


def _single_process_step(cfg, media_prompts) -> dict[str, torch.Tensor]:
    """The same step in one process without DeepSpeed: every rank's micro-batches, the loss
    normalised by the global token count, one SGD step."""
    from raytrain.algos.losses import POLICY_LOSSES
    from raytrain.models.loading import load_family, load_policy, sync_state
    from raytrain.models.logprobs import token_logprobs

    family = load_family(cfg.model)
    torch.manual_seed(0)
    model = load_policy(cfg.model)
    batches = [rank_batch(media_prompts, rank, seed=1) for rank in range(2)]
    tokens = sum(float(b.per_token["loss_mask"].sum()) for b in batches)
    for batch in batches:
        for part in batch.micro_batches(cfg.train.micro_batch_size, family.collate):
            inputs = {k: v for k, v in part.items() if k not in ("old_logprobs", "advantages", "loss_mask")}
            logp = token_logprobs(family, model, inputs)
            loss, _ = POLICY_LOSSES[cfg.algorithm.policy_loss](logp, part["old_logprobs"], part["advantages"],
                                                               part["loss_mask"], cfg.algorithm, tokens, 1.0)
            loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert torch.nn.utils.clip_grad_norm_(trainable, cfg.train.max_grad_norm) < cfg.train.max_grad_norm
    with torch.no_grad():
        for p in trainable:
            p -= cfg.train.lr * p.grad
    return sync_state(model)


@pytest.mark.parametrize("tuning", ["full", "lora"])
def test_zero3_step_with_different_media_mixes_equals_zero2_zero0_and_one_process(steps, media_prompts, tuning):
    from raytrain.models.loading import load_policy, sync_state

    raw, out, states = steps
    cfg = _config(raw, tuning, 2)
    torch.manual_seed(0)
    initial = sync_state(load_policy(cfg.model))
    expected = _single_process_step(cfg, media_prompts)
    (loss0, state0), (loss2, state2), (loss3, state3) = states[tuning, 0], states[tuning, 2], states[tuning, 3]
    assert loss3 == pytest.approx(loss2, rel=1e-5) and loss0 == pytest.approx(loss2, rel=1e-5)
    assert set(state0) == set(state3) == set(state2) == set(expected)
    moved = [k for k in expected if not torch.equal(expected[k], initial[k])]
    if tuning == "full":
        assert any(".visual." in k for k in moved) and any("language_model" in k for k in moved)
    else:
        assert moved and all("lora_" in k for k in expected)  # the adapter alone travels
    for k in expected:  # whole tensors (not shards), the same update
        torch.testing.assert_close(state0[k], expected[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(state2[k], expected[k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(state3[k], expected[k], rtol=1e-4, atol=1e-6)
    # The ZeRO-3 export is an ordinary checkpoint of the same weights.
    exported = sync_state(load_policy(cfg.model, weights=out / f"{tuning}-3"))
    for k in expected:
        torch.testing.assert_close(exported[k], state3[k], rtol=0, atol=0)
