"""Evaluation: greedy batch inference as Ray Data over engine actors, saved batch by batch, and its report.

Rows (a manifest split, or a folder of clips) stream through the same decode path as
training (`build_dataset`), then through a pool of `Predictor` actors, each holding a
rollout engine. Every finished batch is written as its own Parquet part under
`OUT/parts/` before the next is awaited, so a killed evaluation re-run with the same
`OUT` predicts only the items it has not saved, and never one twice. At the end the
parts become `OUT/predictions.parquet`, and the metrics `OUT/metrics.json` and
`OUT/report.md`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from raytrain.cluster import init_ray
from raytrain.config import Config
from raytrain.data.batch import Prompt, Refusal, Sample
from raytrain.data.ingest import Scanned, Source, ingest, scan_sources
from raytrain.data.layouts.labelled import detect_clips
from raytrain.data.manifest import media_kind, write_manifest
from raytrain.data.pipeline import prompts_from_batch, split_rows
from raytrain.data.questions import question_prompt, read_questions
from raytrain.data.sft_targets import sft_batch
from raytrain.engines.base import make_engine
from raytrain.eval.metrics import RATES, UNREADABLE, evaluation_report, proportion
from raytrain.eval.report import FULL_SCHEMA, METRICS, PREDICTION_SCHEMA, PREDICTIONS, REPORT, run_markdown
from raytrain.models.loading import load_family, load_policy, without_lora
from raytrain.models.logprobs import token_logprobs
from raytrain.models.prompts import build_dataset
from raytrain.observe.console import Progress, quiet_ray_data, use_bar
from rewards.answer import parse_answer
from rewards.modes import hybrid_reward
from rewards.outcome import format_reward

PARTS_DIR = "parts"
IDENTITY = "evaluation.json"  # what OUT holds predictions of; a resume with anything else is refused
FOLDER_MANIFEST = "folder_manifest.parquet"  # the scanned clip folder (or question file), kept with the results
FOLDER_SOURCE = "folder"
QUESTIONS_SOURCE = "questions"
# Added by the driver from the rows: the decode pipeline carries only what the model needs.
ROW_COLUMNS = ("source", "domain")


def prediction_record(prompt: Prompt, sample: Sample, *, answer_format: str, mode: str | None, latency_s: float,
                      head_prob: float | None = None) -> dict:
    """One readable item's prediction: the raw response, its parsed answer and its compliance flags, and the
    model's binary head's probability of fake when it has one (DX-LLaVA)."""
    answer = parse_answer(sample.text, answer_format)
    return {
        "id": prompt.id, "path": prompt.path, "media": "video" if prompt.is_video else "image",
        "label": prompt.label.lower(), "category": prompt.category,
        "status": "ok" if answer is not None else "unparsable", "error": "",
        "response": sample.text, "answer": answer, "format_ok": format_reward(sample.text, answer_format) == 0.0,
        "mode_ok": None if mode is None else hybrid_reward(sample.text, mode) == 0.0,
        "truncated": sample.truncated, "num_tokens": len(sample.token_ids), "latency_s": latency_s,
        "head_prob": head_prob,
    }


def unreadable_record(*, id: str, path: str, media: str, label: str, category: str, reason: str) -> dict:
    """An item whose media could not be decoded: listed with its reason, never scored."""
    return {
        "id": id, "path": path, "media": media, "label": label.lower(), "category": category,
        "status": UNREADABLE, "error": reason, "response": None, "answer": None, "format_ok": False,
        "mode_ok": None, "truncated": False, "num_tokens": 0, "latency_s": None, "head_prob": None,
    }


def folder_rows(folder: Path, label: str | None = None) -> tuple[pa.Table, list[dict]]:
    """Manifest rows of a folder of clips (SPEC section 8: `real/`/`fake/` subfolders or a
    `path,label[,category]` CSV; with `label`, every clip in it has that label), all in the test split,
    and unreadable records for the labelled files that cannot be decoded. Files with no label or of an
    unsupported type are no test items: they are printed and left out. Copies of the same content
    stay: each is its own test item."""
    layout = f"clips-{label}" if label else "clips"
    scanned = scan_sources([Source(Path(folder), layout=layout, name=FOLDER_SOURCE)])
    for reject in scanned.rejects:
        print(f"[evaluate] ignored {reject['path']}: {reject['reason']}", flush=True)
    return _test_rows(scanned, FOLDER_SOURCE)


def question_rows(questions: list[dict], image_folder: Path) -> tuple[pa.Table, list[dict]]:
    """Manifest rows of DX-LLaVA evaluation questions (`raytrain.data.questions`), one per question with
    the question id as its id, images relative to `image_folder`; unreadable records for images that
    cannot be decoded."""
    entries = []
    for q in questions:
        path, label = Path(image_folder) / q["image"], str(q["label"]).lower()
        entries.append({"id": str(q["question_id"]), "path": str(path.resolve()), "rel": str(q["image"]),
                        "media": media_kind(path) or "image", "label": label, "source": QUESTIONS_SOURCE,
                        "category": "unknown" if label == "fake" else "real", "domain": q.get("domain") or "",
                        "clips": [str(q["question_id"])], "official_split": "test"})
    return _test_rows(Scanned([Source(Path(image_folder), name=QUESTIONS_SOURCE)], entries, []), QUESTIONS_SOURCE)


def _test_rows(scanned: Scanned, source: str) -> tuple[pa.Table, list[dict]]:
    ingested = ingest(scanned, split="test", deduplicate=False)
    unreadable = [unreadable_record(
        id=entry["id"], path=entry["path"], label=entry["label"], category=entry["category"], media=entry["media"],
        reason=entry["reason"],
    ) | {"source": source, "domain": entry["domain"]} for entry in ingested.unreadable]
    return ingested.table, unreadable


class Predictor:
    """Ray Data callable class: one rollout engine per actor, greedy answers for a batch of prompts.

    Latency is the batch's generation time divided by its readable items (engines batch internally).
    """

    def __init__(self, cfg: Config, weights: str | None = None):
        torch.set_num_threads(cfg.rollout.torch_threads)
        self.cfg = cfg
        self.engine = make_engine(cfg.model, cfg.rollout, weights=weights)

    def __call__(self, batch: dict) -> pa.Table:
        prompts, skipped = prompts_from_batch(batch)
        start = time.perf_counter()
        samples = self.engine.generate(prompts, self.cfg.rollout.sampling, greedy=True) if prompts else []
        latency = (time.perf_counter() - start) / max(len(prompts), 1)
        # A prompt the engine refused (media beyond its limits) is listed like an undecodable file.
        skipped += [{"key": p.key, "path": p.path, "reason": g.reason} for p, g in zip(prompts, samples) if isinstance(g, Refusal)]
        answered = [(p, g[0]) for p, g in zip(prompts, samples) if not isinstance(g, Refusal)]
        heads = self.engine.head_probs([p for p, _ in answered]) if answered else []
        records = [
            prediction_record(p, s, answer_format=self.cfg.data.answer_format, mode=p.mode if self.cfg.data.mode else None,
                              latency_s=latency, head_prob=h)
            for (p, s), h in zip(answered, heads)
        ]
        row_of = {str(key): i for i, key in enumerate(batch["key"])}
        for skip in skipped:
            i = row_of[skip["key"]]
            records.append(unreadable_record(
                id=str(batch["id"][i]), path=skip["path"], media=str(batch["media"][i]), label=str(batch["label"][i]),
                category=str(batch["category"][i]), reason=skip["reason"],
            ))
        return pa.Table.from_pylist(records, schema=PREDICTION_SCHEMA)


class LossScorer:
    """Ray Data callable class: the summed negative log-likelihood of a batch's SFT targets
    (`raytrain.data.sft_targets`) under one model, and their token count."""

    def __init__(self, cfg: Config, weights: str | None = None):
        torch.set_num_threads(cfg.rollout.torch_threads)
        self.cfg = cfg
        self.family = load_family(cfg.model)
        self.model = load_policy(without_lora(cfg.model), weights=weights).eval()

    def __call__(self, batch: dict) -> dict:
        prompts, _ = prompts_from_batch(batch)  # an unreadable file has no target to score
        targets = sft_batch(self.cfg, prompts, self.family.tokenizer, self.family.end_id)
        if targets is None:
            return {"nll": [0.0], "tokens": [0.0]}
        (tensors,) = targets.micro_batches(len(targets), self.family.collate)
        mask = tensors.pop("loss_mask")
        with torch.no_grad():
            logp = token_logprobs(self.family, self.model, tensors)
        return {"nll": [float(-(logp * mask).sum())], "tokens": [float(mask.sum())]}


def heldout_loss(cfg: Config, *, split: str | None = None) -> float:
    """Mean per-token negative log-likelihood of the SFT targets of `split` (default `data.eval_split`)
    under `cfg.model.path` (a LoRA export is served on its base)."""
    cfg = cfg.with_absolute_paths()
    init_ray(cfg.cluster)
    served, adapter = split_adapter(cfg)
    rows = split_rows(cfg.data, split or cfg.data.eval_split, seed=cfg.run.seed)
    scored = build_dataset(served, rows).map_batches(
        LossScorer, fn_constructor_kwargs={"cfg": served, "weights": adapter}, batch_size=cfg.evaluation.batch_size,
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=cfg.rollout.num_cpus, num_gpus=cfg.rollout.num_gpus,
        resources=dict(cfg.rollout.resources),
    )
    nll = tokens = 0.0
    for part in scored.iter_batches(batch_size=None, batch_format="numpy"):
        nll, tokens = nll + float(part["nll"].sum()), tokens + float(part["tokens"].sum())
    if tokens == 0:
        raise ValueError(f"{cfg.data.manifest}: no readable item in split {split or cfg.data.eval_split!r} to compute a loss on")
    return nll / tokens


def _read(paths: list[Path]) -> list[dict]:
    return [row for path in paths for row in pq.read_table(path).to_pylist()]


def saved_predictions(out: Path) -> list[dict]:
    """Every saved prediction of `out` (consolidated file and parts), first copy of each id only."""
    out = Path(out)
    files = ([out / PREDICTIONS] if (out / PREDICTIONS).is_file() else []) + sorted((out / PARTS_DIR).glob("*.parquet"))
    records, seen = [], set()
    for record in _read(files):
        if record["id"] not in seen:
            seen.add(record["id"])
            records.append(record)
    return records


def _save_part(out: Path, table: pa.Table) -> None:
    # Written under a temporary name and renamed: a kill mid-write leaves no half part behind.
    parts = Path(out) / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    pq.write_table(table, parts / f".{name}.tmp")
    os.replace(parts / f".{name}.tmp", parts / name)


def _consolidate(out: Path, ids: set[str]) -> list[dict]:
    # Only the items evaluated now: a clip since removed from the folder or manifest leaves the report.
    records = sorted((r for r in saved_predictions(out) if r["id"] in ids), key=lambda r: r["id"])
    tmp = Path(out) / f".{PREDICTIONS}.tmp"
    pq.write_table(pa.Table.from_pylist(records, schema=FULL_SCHEMA), tmp)
    os.replace(tmp, Path(out) / PREDICTIONS)
    for part in [*(Path(out) / PARTS_DIR).glob("*.parquet"), *(Path(out) / PARTS_DIR).glob(".*.tmp")]:
        part.unlink()  # the .tmp ones: half-written when a run was killed
    return records


def inference_actors(cfg: Config, batches: int) -> int:
    """Predictor actors: `evaluation.num_actors`, else every GPU of the cluster (CPU: `rollout.num_actors`),
    never more than there are batches."""
    wanted = cfg.evaluation.num_actors
    if wanted is None and cfg.rollout.num_gpus > 0:
        gpus = ray.cluster_resources().get("GPU", 0)
        wanted = int(gpus // cfg.rollout.num_gpus)
        if wanted == 0:
            raise RuntimeError(f"rollout.num_gpus={cfg.rollout.num_gpus} but the cluster has {gpus} GPU(s)")
    return max(1, min(wanted or cfg.rollout.num_actors, batches))


def run_inference(cfg: Config, rows: pa.Table, out: Path, unreadable: list[dict] = (), *,
                  weights: str | None = None) -> list[dict]:
    """Predict every row not yet saved under `out`, saving each finished batch; returns all predictions.

    `weights`: a LoRA adapter folder served on the base model `cfg.model.path`.
    """
    done = {r["id"] for r in saved_predictions(out)}
    extra = {c: dict(zip(rows["id"].to_pylist(), rows[c].to_pylist())) for c in ROW_COLUMNS}
    pending_unreadable = [r for r in unreadable if r["id"] not in done]
    if pending_unreadable:
        _save_part(out, pa.Table.from_pylist(pending_unreadable, schema=FULL_SCHEMA))
    todo = rows.filter(pc.invert(pc.is_in(rows["id"], value_set=pa.array(sorted(done), pa.string()))))
    if done:
        print(f"[evaluate] resuming: {len(done)} predictions saved, {todo.num_rows} to go", flush=True)
    if todo.num_rows:
        batch_size = cfg.evaluation.batch_size
        quiet_ray_data(cfg.run)
        actors = inference_actors(cfg, math.ceil(todo.num_rows / batch_size))
        predictions = build_dataset(cfg, todo).map_batches(
            Predictor,
            fn_constructor_kwargs={"cfg": cfg, "weights": weights},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cfg.rollout.num_cpus,
            num_gpus=cfg.rollout.num_gpus,
            resources=dict(cfg.rollout.resources),  # on the rollout engines' nodes (`rollout.resources`)
        )
        progress = Progress(todo.num_rows, "[evaluate]", bar=use_bar(cfg.run), unit="item")
        for table in predictions.iter_batches(batch_size=None, batch_format="pyarrow"):
            ids = table["id"].to_pylist()
            for column in ROW_COLUMNS:
                table = table.append_column(column, pa.array([extra[column][i] for i in ids], pa.string()))
            _save_part(out, table.select(FULL_SCHEMA.names).cast(FULL_SCHEMA))
            progress.update(table.num_rows)
        progress.close()
    return _consolidate(out, set(rows["id"].to_pylist()) | {r["id"] for r in unreadable})


def split_adapter(cfg: Config) -> tuple[Config, str | None]:
    """A LoRA export (a folder with `adapter_config.json`, what LoRA training writes to `final/`) is
    evaluated on its base model: returns the config pointing at the base and the adapter folder."""
    adapter_config = Path(cfg.model.path) / "adapter_config.json"
    if not adapter_config.is_file():
        return cfg, None
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_config}: no base_model_name_or_path, so the adapter's base model is unknown")
    return cfg.with_model(base), cfg.model.path


def _model_fingerprint(path: str) -> str:
    """Names, sizes and modification times of a local model's files (a retrained model in the same folder
    must not resume another model's predictions); the name itself for a hub model."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    stats = sorted((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()


def _claim(out: Path, identity: dict) -> None:
    path = Path(out) / IDENTITY
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != identity:
            changed = sorted(k for k in identity.keys() | previous.keys() if identity.get(k) != previous.get(k))
            raise ValueError(f"{out} holds predictions of another evaluation (differs in {', '.join(changed)}); "
                             "use a new --output or delete it")
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2))


def _unlabelled(group: dict) -> dict:
    """A group's metrics without the rates that need labels (clips of unknown truth)."""
    kept = {"format_compliance", "mode_compliance"}
    return {k: ({"value": None, "low": None, "high": None} if k in RATES and k not in kept else v)
            for k, v in group.items() if k != "confusion"}


def evaluate(cfg: Config, out: Path, *, split: str | None = None, folder: Path | None = None,
             questions: Path | None = None, image_folder: Path | None = None, name: str | None = None,
             label: str | None = None) -> dict:
    """Evaluate `cfg.model.path` on a manifest split (default `data.eval_split`), on every clip of `folder`,
    or on a DX-LLaVA question file (`questions`, images relative to `image_folder`, by default the file's
    folder; its question becomes `data.prompt`).

    `label` (real/fake) labels every clip of a flat `folder`; a folder without labels (no CSV, no
    `real/`/`fake/`, no `label`) is still predicted, and its report gives only the share called fake
    and format compliance (`labelled: false`). Writes predictions, metrics and the Markdown report to
    `out`, resuming saved predictions; returns the summary written to `metrics.json`: {name, model,
    data, split, mode, labelled, called_fake, overall, groups}.
    """
    out = Path(out).resolve()
    cfg = cfg.with_absolute_paths()
    labelled, identity_label = True, {}
    if folder is not None or questions is not None:
        if folder is not None:
            if label is None and not detect_clips(Path(folder)):
                labelled, label = False, "fake"  # a placeholder the rates that need labels never show
            identity_label = {"label": label, "labelled": labelled} if label else {}
            rows, unreadable = folder_rows(folder, label)
            data = str(Path(folder).resolve())
        else:
            asked = read_questions(questions)
            rows, unreadable = question_rows(asked, Path(image_folder or Path(questions).parent))
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"prompt": question_prompt(asked)})})
            data = str(Path(questions).resolve())
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(rows, out / FOLDER_MANIFEST)
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"manifest": out / FOLDER_MANIFEST})})
        rows = rows.append_column("key", rows["id"])
        if cfg.data.max_rows is not None:
            rows = rows.slice(0, cfg.data.max_rows)
        split = None
    else:
        split = split or cfg.data.eval_split
        rows, unreadable, data = split_rows(cfg.data, split, seed=cfg.run.seed), [], str(cfg.data.manifest)
    identity = {
        "model": cfg.model.path, "model_fingerprint": _model_fingerprint(cfg.model.path), "data": data, "split": split,
        "mode": cfg.data.mode, "prompt": cfg.data.prompt, "answer_format": cfg.data.answer_format,
        "num_frames": cfg.data.num_frames, "max_pixels": cfg.data.max_pixels, "min_pixels": cfg.data.min_pixels,
        "max_new_tokens": cfg.rollout.sampling.max_new_tokens, "max_rows": cfg.data.max_rows, **identity_label,
    }
    _claim(out, identity)
    init_ray(cfg.cluster)
    served, adapter = split_adapter(cfg)
    records = run_inference(served, rows, out, unreadable, weights=adapter)
    report = evaluation_report(records, confidence=cfg.evaluation.confidence,
                               resamples=cfg.evaluation.bootstrap_resamples, seed=cfg.run.seed)
    if not labelled:
        report = {"overall": _unlabelled(report["overall"]),
                  "groups": {k: {v: _unlabelled(g) for v, g in groups.items()} for k, groups in report["groups"].items()}}
    scored = [r for r in records if r["status"] != UNREADABLE]
    called_fake = proportion(sum(r["answer"] == "fake" for r in scored), len(scored), cfg.evaluation.confidence)
    summary = {"name": name or out.name, "model": cfg.model.path, "data": data, "split": split, "mode": cfg.data.mode,
               "labelled": labelled, "called_fake": called_fake, "confidence": cfg.evaluation.confidence, **report,
               "unreadable": [{"path": r["path"], "reason": r["error"]} for r in records if r["status"] == UNREADABLE]}
    (out / METRICS).write_text(json.dumps(summary, indent=2))
    (out / REPORT).write_text(run_markdown(summary))
    return summary
