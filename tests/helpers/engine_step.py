"""One DeepSpeed step of the tiny model in a process of its own (`python -m tests.helpers.engine_step IN OUT`):
a world of one gloo rank, run by tests/unit/train/test_deepspeed_engine.py so that bitsandbytes (kept off
the suite's path, see the Makefile) is on this process's path alone.

IN (pickle): {"raw": config dict, "prompts": media prompts, "runs": {name: {dotted key: value}}}. For each
run: the engine's settings, the step's loss, which parameters the step changed, the bitsandbytes layers.
OUT: those as JSON."""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys

import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logp(family, engine, inputs: dict, *, adapter: bool) -> torch.Tensor:
    """The policy's log-probs of `inputs`, or with `adapter` off the frozen base model's."""
    from raytrain.models.logprobs import token_logprobs

    with torch.no_grad():
        if adapter:
            return token_logprobs(family, engine.module, inputs)
        with engine.module.disable_adapter():
            return token_logprobs(family, engine.module, inputs)


def main(inp: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    torch.set_num_threads(1)
    import deepspeed

    from raytrain.config import apply_overrides, parse_config
    from raytrain.models.loading import load_family, load_policy
    from raytrain.train.algorithms import ALGORITHMS
    from raytrain.train.step import LOSS_INPUTS, deepspeed_engine, train_step
    from tests.helpers.train_batches import rank_batch

    deepspeed.init_distributed(dist_backend="gloo")
    args = pickle.loads(open(inp, "rb").read())
    results = {}
    for name, overrides in args["runs"].items():
        raw = apply_overrides(json.loads(json.dumps(args["raw"])), [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
        cfg = parse_config(raw)
        family = load_family(cfg.model)
        (padding,) = family.padding_batch().micro_batches(1, family.collate)
        torch.manual_seed(0)
        engine = deepspeed_engine(cfg, load_policy(cfg.model))
        # Training mode throughout, as in the worker loop: bitsandbytes' CPU backend repacks a 4-bit layer's
        # weights for inference at its first eval-mode forward without gradients, and cannot train after that.
        engine.train()
        batch = rank_batch(args["prompts"], 0, seed=1)
        (inputs,) = batch.micro_batches(len(batch), family.collate)
        inputs = {k: v for k, v in inputs.items() if k not in LOSS_INPUTS}
        base, policy = _logp(family, engine, inputs, adapter=False), _logp(family, engine, inputs, adapter=True)
        before = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
        mask = batch.per_token["loss_mask"]
        stats = train_step(cfg, ALGORITHMS[cfg.algorithm.name], family, engine, None, batch, float(mask.sum()),
                           float((mask.sum(-1) > 0).sum()), 1, padding)
        changed = [n for n, p in engine.module.named_parameters() if n in before and not torch.equal(before[n], p.detach())]
        mask = inputs["response_mask"].bool()
        results[name] = {
            "gradient_clipping": engine.gradient_clipping(), "reduce_bucket_size": engine.zero_reduce_bucket_size(),
            "zero_stage": engine.zero_optimization_stage(), "engine_optimizer": type(engine.optimizer).__name__,
            "optimizer": type(getattr(engine.optimizer, "optimizer", engine.optimizer)).__name__,
            "loss": stats["loss"], "changed": changed,
            # The frozen (quantized) base: its log-probs with the adapter off are the same after the step.
            "base_drift": float((_logp(family, engine, inputs, adapter=False) - base)[mask].abs().max()),
            "policy_drift": float((_logp(family, engine, inputs, adapter=True) - policy)[mask].abs().max()), "trainable": [n for n, p in engine.module.named_parameters() if p.requires_grad],
            "quantized_layers": sorted({type(m).__name__ for m in engine.module.modules() if type(m).__module__.startswith("bitsandbytes")}),
        }
        del engine
    with open(out, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main(*sys.argv[1:])
