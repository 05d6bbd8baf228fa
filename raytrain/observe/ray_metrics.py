"""Every Ray metric of a run, declared once: name, kind, unit, description and tags (`METRICS`).

Training rank 0 sets the step's gauges from the same record it writes to `metrics.jsonl`
(`StepGauges`, mapped by `step_series`); the rollout actors (`RolloutMetrics`) and the reward actor
(`RewardMetrics`) count and time their own work as it happens. Every series carries the run's tags,
`run` (`run.name`) and `algorithm` (`algorithm.name`). Ray exports them on each node's metrics
endpoint with a `ray_` prefix (`ray_deepfake_rl_reward{component="accuracy",run="demo",...}`), where
Prometheus (`monitoring/prometheus.yml`) scrapes them and Grafana
(`monitoring/grafana/deepfake_rl_dashboard.json`, built from this table) draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ray.util import metrics as ray_metrics

from raytrain.config.sections import AlgorithmConfig, RunConfig

PREFIX = "ray_"  # what Ray's exporter puts before every application metric's name
RUN_TAGS = ("run", "algorithm")
SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
TOKENS = (8, 16, 32, 64, 128, 256, 512, 768, 1024, 2048, 4096)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["gauge", "counter", "histogram"]
    unit: str
    description: str
    source: Literal["trainer", "rollout", "reward"]
    tag_keys: tuple[str, ...] = ()  # besides RUN_TAGS
    boundaries: tuple[float, ...] = ()  # histograms only

    @property
    def exported(self) -> str:
        """The Prometheus name (a counter's gets `_total`, a histogram's `_bucket`/`_sum`/`_count`)."""
        return PREFIX + self.name + ("_total" if self.kind == "counter" else "")


def _spec(*args, **kwargs) -> MetricSpec:
    return MetricSpec(*args, **kwargs)


METRICS: dict[str, MetricSpec] = {s.name: s for s in (
    # Training rank 0, once per optimizer step: the step's record of metrics.jsonl.
    _spec("deepfake_rl_step", "gauge", "steps", "Optimizer steps taken (`step`).", "trainer"),
    _spec("deepfake_rl_policy_version", "gauge", "version", "Policy version after the step (`policy_version`).", "trainer"),
    _spec("deepfake_rl_rollout_version", "gauge", "version", "Policy version that generated rank 0's rollouts (`rollout_version`).", "trainer"),
    _spec("deepfake_rl_rollout_staleness", "gauge", "versions",
          "Versions between the policy that was trained and the one that generated its rollouts (`rollout_staleness`; "
          "bounded by `algorithm.max_staleness`).", "trainer"),
    _spec("deepfake_rl_reward", "gauge", "reward",
          "Mean of one reward component over the step's sampled responses (`reward/<component>`: format and hybrid are the "
          "format and mode compliance, judge_asked/judge_failed the judged shares).", "trainer", ("component",)),
    _spec("deepfake_rl_accuracy_by_category", "gauge", "ratio",
          "Sampled accuracy per manipulation category (`reward/accuracy/<category>`).", "trainer", ("category",)),
    _spec("deepfake_rl_groups", "gauge", "groups",
          "Groups of the step by dynamic sampling: drawn, kept (informative), dropped, and nonfinite (dropped for a NaN or "
          "infinite reward) (`groups_<outcome>`).", "trainer", ("outcome",)),
    _spec("deepfake_rl_responses", "gauge", "responses", "Responses sampled for the step (`responses`).", "trainer"),
    _spec("deepfake_rl_generation_rounds", "gauge", "rounds", "Generation rounds dynamic sampling needed (`generation_rounds`).", "trainer"),
    _spec("deepfake_rl_response_length", "gauge", "tokens", "Mean response length (`response_tokens_mean`).", "trainer"),
    _spec("deepfake_rl_truncated_ratio", "gauge", "ratio",
          "Share of responses cut at `rollout.sampling.max_new_tokens` (`truncated_mean`).", "trainer"),
    _spec("deepfake_rl_train_tokens", "gauge", "tokens", "Loss tokens of the step over all ranks (`tokens`).", "trainer"),
    _spec("deepfake_rl_tokens_per_second", "gauge", "tokens/s",
          "Throughput of a phase: response tokens sampled per second of rollout, loss tokens per second of "
          "training (`throughput/<phase>_tokens_per_s`).", "trainer", ("phase",)),
    _spec("deepfake_rl_phase_seconds", "gauge", "seconds",
          "Wall time of a phase of the step (`time/<phase>_s`): rollout (generation and scoring), of it data (waiting "
          "for the shard's prompts) and reward (waiting for scores once generation was done), train, weight_sync, "
          "idle (checkpoint and logging of the previous step).", "trainer", ("phase",)),
    _spec("deepfake_rl_weight_sync_bytes", "gauge", "bytes", "Bytes rank 0 sent to each rollout engine in the step's sync (`weight_sync/bytes`).", "trainer"),
    _spec("deepfake_rl_media_skipped", "gauge", "draws", "Undecodable media skipped so far in this run (`media_skipped`).", "trainer"),
    _spec("deepfake_rl_loss", "gauge", "loss", "The step's loss (`loss`).", "trainer"),
    _spec("deepfake_rl_update", "gauge", "value",
          "Any other figure of the step, by its metrics.jsonl name (`stat`): clip_frac, ratio_mean, approx_kl, kl, "
          "sft_nll, prompts, micro_batches, padding_fraction, step_skipped and passes_dropped (the NaN guard).",
          "trainer", ("stat",)),
    # Rollout actors, per generate call.
    _spec("deepfake_rl_rollout_generated_tokens", "counter", "tokens", "Response tokens generated.", "rollout"),
    _spec("deepfake_rl_rollout_responses", "counter", "responses", "Responses generated.", "rollout"),
    _spec("deepfake_rl_rollout_truncated", "counter", "responses", "Responses cut at max_new_tokens.", "rollout"),
    _spec("deepfake_rl_rollout_generate_seconds", "histogram", "seconds", "Wall time of one generate call.", "rollout",
          boundaries=SECONDS),
    _spec("deepfake_rl_rollout_response_tokens", "histogram", "tokens", "Length of each generated response.", "rollout",
          boundaries=TOKENS),
    # The reward actor, per scored group.
    _spec("deepfake_rl_reward_scored", "counter", "responses", "Responses scored.", "reward"),
    _spec("deepfake_rl_reward_score_seconds", "histogram", "seconds",
          "Wall time of scoring one call's responses (the reward phase; judge and encoder included).", "reward", boundaries=SECONDS),
    _spec("deepfake_rl_judge_calls", "counter", "requests", "Responses sent to the thinking judge.", "reward"),
    _spec("deepfake_rl_judge_failures", "counter", "requests", "Judged responses whose batch failed or timed out (scored 0).", "reward"),
    _spec("deepfake_rl_judge_latency_seconds", "histogram", "seconds", "Seconds the reward actor waited for one judge batch (batches run in parallel; it waits in order).", "reward", boundaries=SECONDS),
)}

# metrics.jsonl name -> (metric, extra tags); names under a prefix are mapped by `step_series`.
_STEP_KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "step": ("deepfake_rl_step", {}),
    "policy_version": ("deepfake_rl_policy_version", {}),
    "rollout_version": ("deepfake_rl_rollout_version", {}),
    "rollout_staleness": ("deepfake_rl_rollout_staleness", {}),
    "responses": ("deepfake_rl_responses", {}),
    "generation_rounds": ("deepfake_rl_generation_rounds", {}),
    "response_tokens_mean": ("deepfake_rl_response_length", {}),
    "truncated_mean": ("deepfake_rl_truncated_ratio", {}),
    "tokens": ("deepfake_rl_train_tokens", {}),
    "weight_sync/bytes": ("deepfake_rl_weight_sync_bytes", {}),
    "media_skipped": ("deepfake_rl_media_skipped", {}),
    "loss": ("deepfake_rl_loss", {}),
    **{f"groups_{o}": ("deepfake_rl_groups", {"outcome": o}) for o in ("drawn", "kept", "dropped", "nonfinite")},
    **{f"time/{p}_s": ("deepfake_rl_phase_seconds", {"phase": p}) for p in ("rollout", "data", "reward", "train", "weight_sync", "idle")},
    **{f"throughput/{p}_tokens_per_s": ("deepfake_rl_tokens_per_second", {"phase": p}) for p in ("rollout", "train")},
}


def step_series(record: dict) -> list[tuple[str, dict[str, str], float]]:
    """(metric, extra tags, value) for every number of a metrics.jsonl record."""
    series = []
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if key in _STEP_KEYS:
            name, tags = _STEP_KEYS[key]
        elif key.startswith("reward/accuracy/"):
            name, tags = "deepfake_rl_accuracy_by_category", {"category": key.removeprefix("reward/accuracy/")}
        elif key.startswith("reward/"):
            name, tags = "deepfake_rl_reward", {"component": key.removeprefix("reward/")}
        else:
            name, tags = "deepfake_rl_update", {"stat": key}
        series.append((name, tags, float(value)))
    return series


def run_tags(run: RunConfig, algorithm: AlgorithmConfig) -> dict[str, str]:
    return {"run": run.name, "algorithm": algorithm.name}


def _make(spec: MetricSpec, tags: dict[str, str]):
    keys = RUN_TAGS + spec.tag_keys
    description = f"{spec.description} Unit: {spec.unit}."
    if spec.kind == "gauge":
        metric = ray_metrics.Gauge(spec.name, description, tag_keys=keys)
    elif spec.kind == "counter":
        metric = ray_metrics.Counter(spec.name, description, tag_keys=keys)
    else:
        metric = ray_metrics.Histogram(spec.name, description, boundaries=list(spec.boundaries), tag_keys=keys)
    metric.set_default_tags(tags)
    return metric


class _Recorder:
    """The metrics of one `source`, made in the process that records them (Ray metrics are per process)."""

    source: str

    def __init__(self, tags: dict[str, str]):
        self.m = {name: _make(spec, tags) for name, spec in METRICS.items() if spec.source == self.source}

    def _inc(self, name: str, value: float) -> None:
        if value > 0:  # a Ray counter refuses zero increments
            self.m[name].inc(value)


class StepGauges(_Recorder):
    """Training rank 0: the step's record as gauges."""

    source = "trainer"

    def record(self, record: dict) -> None:
        for name, tags, value in step_series(record):
            self.m[name].set(value, tags=tags)


class RolloutMetrics(_Recorder):
    """A rollout actor: tokens, responses and truncations generated, and how long each call took."""

    source = "rollout"

    def generated(self, lengths: list[int], truncated: int, seconds: float) -> None:
        self._inc("deepfake_rl_rollout_generated_tokens", sum(lengths))
        self._inc("deepfake_rl_rollout_responses", len(lengths))
        self._inc("deepfake_rl_rollout_truncated", truncated)
        self.m["deepfake_rl_rollout_generate_seconds"].observe(seconds)
        for n in lengths:
            self.m["deepfake_rl_rollout_response_tokens"].observe(n)


class RewardMetrics(_Recorder):
    """The reward actor: responses scored and the time it took; the judge's calls, failures and latency."""

    source = "reward"

    def scored(self, responses: int, seconds: float) -> None:
        self._inc("deepfake_rl_reward_scored", responses)
        self.m["deepfake_rl_reward_score_seconds"].observe(seconds)

    def judged(self, requests: int, failed: bool, seconds: float) -> None:
        self._inc("deepfake_rl_judge_calls", requests)
        self._inc("deepfake_rl_judge_failures", requests if failed else 0)
        self.m["deepfake_rl_judge_latency_seconds"].observe(seconds)
