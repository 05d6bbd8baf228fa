"""The BusterX++ three-stage pipeline (SPEC section 6, seed 000): each stage's config, and stage 2's data.

Stage 1 (70% of the steps) is DAPO in think mode with format, overlong and accuracy rewards.
Stage 2 (5%), Thinking Mode Fusion, fine-tunes on stage 1's own correct responses, each
rewritten as a `/think` example (its reasoning kept) and a `/no_think` example (empty think).
Stage 3 (25%) is DAPO with prompts randomly in either mode and the hybrid and thinking rewards
added. `jobs.busterx` runs them; this module holds what they are.
"""

from __future__ import annotations

import math
from pathlib import Path

from raytrain.config import Config, parse_config, set_dotted
from rewards.modes import think_content

STAGES = (1, 2, 3)
# What makes each stage that stage; the config's `busterx.stageN` overrides come after these.
_STAGE_SETTINGS = {
    1: {"algorithm.name": "dapo", "data.mode": "think"},
    2: {"algorithm.name": "sft", "sft.answer": "label", "data.mode": None, "data.max_rows": None, "data.train_split": "train"},
    3: {"algorithm.name": "dapo", "data.mode": "random"},
}


def stage_steps(cfg: Config) -> dict[int, int]:
    """Optimizer steps of each stage: its share of `busterx.total_steps` (0 skips the stage)."""
    shares = cfg.busterx.shares
    return {stage: round(cfg.busterx.total_steps * share / sum(shares)) for stage, share in zip(STAGES, shares)}


def stage_dir(cfg: Config, stage: int) -> Path:
    return Path(cfg.run.output_dir) / f"stage{stage}"


def stage_config(cfg: Config, stage: int, model_path: str | Path, *, fusion_manifest: Path | None = None,
                 fusion_rows: int = 0) -> Config:
    """The full config of `stage`: the pipeline's config, the stage's settings, its `busterx.stageN`
    overrides, then its steps, starting weights and output folder. Stage 2 trains on
    `fusion_manifest` (`fusion_rows` rows), as many passes as its steps need."""
    raw = cfg.model_dump(mode="json")
    steps = stage_steps(cfg)[stage]
    forced = {"model.path": str(model_path), "run.output_dir": str(stage_dir(cfg, stage)),
              "run.name": f"{cfg.run.name}-stage{stage}", "train.total_steps": steps}
    if cfg.model.lora.enabled:
        forced["model.lora.export_merged"] = True  # the next stage starts from merged weights with a fresh adapter
    if stage == 2:
        if fusion_manifest is None or fusion_rows == 0:
            raise ValueError("stage 2 needs the fusion manifest of stage 1's correct responses")
        per_step = cfg.train.num_workers * cfg.train.prompts_per_worker
        forced.update({"data.manifest": str(fusion_manifest), "data.epochs": max(1, math.ceil(steps * per_step / fusion_rows))})
    for key, value in {**_STAGE_SETTINGS[stage], **getattr(cfg.busterx, f"stage{stage}"), **forced}.items():
        set_dotted(raw, key, value)
    return parse_config(raw, source=f"busterx stage {stage}")


def fusion_rows(predictions: list[dict], rows: dict[str, dict], limit: int) -> list[dict]:
    """Stage 2's training rows: up to `limit` correct, well-formatted stage-1 responses, each as a
    `/think` row (its reasoning as the explanation) and a `/no_think` row (empty think).

    `predictions` are evaluation records (`raytrain.eval.inference`); `rows` maps ids to manifest rows.
    """
    out = []
    for p in predictions:
        if len(out) >= 2 * limit:
            break
        if p["status"] != "ok" or p["answer"] != p["label"] or not p["format_ok"]:
            continue
        row = {**rows[p["id"]], "split": "train", "weight": None}
        reasoning = think_content(p["response"]) or None  # None: the `sft.think` template
        out.append({**row, "id": f"{row['id']}-think", "mode": "think", "explanation": reasoning})
        out.append({**row, "id": f"{row['id']}-no_think", "mode": "no_think", "explanation": None})
    return out
