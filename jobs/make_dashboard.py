"""The Grafana dashboard of a run's Ray metrics, built from their declarations (`raytrain.observe.ray_metrics`)
with Ray's own dashboard factory, so it has the layout of the dashboards Ray ships and embeds: one panel
per metric in rows, `${datasource}`, and the SessionName / run / algorithm variables.

    python -m jobs.make_dashboard --out monitoring/grafana/deepfake_rl_dashboard.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ray
from ray.dashboard.modules.metrics.dashboards.common import DashboardConfig, Panel, Row, Target
from ray.dashboard.modules.metrics.grafana_dashboard_factory import _generate_grafana_panels

from raytrain.observe.ray_metrics import METRICS, MetricSpec

UID = "deepfakeRlDashboard"
SHIPPED = Path(__file__).resolve().parents[1] / "monitoring" / "grafana" / "deepfake_rl_dashboard.json"
FILTERS = 'SessionName=~"$SessionName",run=~"$run",algorithm=~"$algorithm"'
ROWS = (  # (title, metrics), in the order a person asks: is it learning, what does sampling do, where does time go
    ("Learning", ("deepfake_rl_reward", "deepfake_rl_accuracy_by_category", "deepfake_rl_loss", "deepfake_rl_update")),
    ("Dynamic sampling and responses", ("deepfake_rl_groups", "deepfake_rl_generation_rounds", "deepfake_rl_responses",
                                        "deepfake_rl_response_length", "deepfake_rl_truncated_ratio",
                                        "deepfake_rl_rollout_response_tokens")),
    ("Throughput and time", ("deepfake_rl_tokens_per_second", "deepfake_rl_phase_seconds", "deepfake_rl_train_tokens",
                             "deepfake_rl_rollout_generated_tokens", "deepfake_rl_rollout_responses",
                             "deepfake_rl_rollout_truncated", "deepfake_rl_rollout_generate_seconds",
                             "deepfake_rl_reward_scored", "deepfake_rl_reward_score_seconds")),
    ("Policy versions and weight sync", ("deepfake_rl_step", "deepfake_rl_policy_version", "deepfake_rl_rollout_version",
                                         "deepfake_rl_rollout_staleness", "deepfake_rl_weight_sync_bytes")),
    ("Judge and data", ("deepfake_rl_judge_calls", "deepfake_rl_judge_failures", "deepfake_rl_judge_latency_seconds",
                        "deepfake_rl_media_skipped")),
)
GRAFANA_UNITS = {"seconds": "s", "bytes": "bytes", "ratio": "percentunit", "tokens/s": "short"}


def _targets(spec: MetricSpec) -> list[Target]:
    by = ", ".join(("run", *spec.tag_keys))
    legend = "{{run}}" + "".join(f" {k}={{{{{k}}}}}" for k in spec.tag_keys)
    if spec.kind == "gauge":
        return [Target(expr=f"max({spec.exported}{{{{{{global_filters}}}}}}) by ({by})", legend=legend)]
    if spec.kind == "counter":
        return [Target(expr=f"sum(rate({spec.exported}{{{{{{global_filters}}}}}}[$window])) by ({by})", legend=legend + " /s")]
    rate = f"sum(rate({spec.exported}_bucket{{{{{{global_filters}}}}}}[$window])) by (le, {by})"
    return [Target(expr=f"histogram_quantile({q}, {rate})", legend=f"{legend} p{int(q * 100)}") for q in (0.5, 0.95)]


def _panel(spec: MetricSpec, panel_id: int) -> Panel:
    per_second = " per second" if spec.kind == "counter" else ""
    return Panel(id=panel_id, title=spec.name.removeprefix("deepfake_rl_").replace("_", " ") + per_second,
                 description=f"{spec.description} `{spec.exported}` ({spec.kind}, {spec.unit}; from the {spec.source}).",
                 unit=GRAFANA_UNITS.get(spec.unit, "short"), targets=_targets(spec), fill=0, stack=False)


def _variable(name: str) -> dict:
    query = f"label_values(ray_deepfake_rl_step, {name})"
    return {"name": name, "label": name, "type": "query", "datasource": "${datasource}", "definition": query,
            "query": {"query": query, "refId": "StandardVariableQuery"}, "refresh": 2, "hide": 0, "includeAll": True,
            "multi": True, "allValue": ".*", "sort": 1, "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def dashboard() -> dict:
    """The dashboard JSON: Ray's panel layout (`_generate_grafana_panels`) under Ray's dashboard header."""
    ids = iter(range(1, 1000))
    rows = [Row(title=title, id=next(ids), panels=[_panel(METRICS[name], next(ids)) for name in names])
            for title, names in ROWS]
    listed = {name for _, names in ROWS for name in names}
    assert listed == set(METRICS), f"metrics without a panel: {sorted(set(METRICS) - listed)}"
    config = DashboardConfig(name="DEEPFAKE_RL", default_uid=UID, rows=rows, standard_global_filters=[FILTERS],
                             base_json_file_name="")
    base = json.loads((Path(ray.__file__).parent / "dashboard/modules/metrics/dashboards/train_grafana_dashboard_base.json").read_text())
    session = next(v for v in base["templating"]["list"] if v["name"] == "SessionName")
    session.update(definition="label_values(ray_deepfake_rl_step, SessionName)",
                   query={"query": "label_values(ray_deepfake_rl_step, SessionName)", "refId": "StandardVariableQuery"})
    keep = [v for v in base["templating"]["list"] if v["name"] in ("datasource", "window")]
    return {**base, "title": "deepfake-rl training", "uid": UID, "panels": _generate_grafana_panels(config, [], ""),
            "templating": {"list": [*keep, session, _variable("run"), _variable("algorithm")]},
            "tags": ["deepfake-rl", f"rayVersion:{ray.__version__}"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=SHIPPED)
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"[dashboard] {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
