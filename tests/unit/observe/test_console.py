"""The console: plain periodic lines on a non-interactive stream, each once; Ray Data's bars off unless asked; no
warning a second from Ray Train's placement-group cleaner on an embedded Ray."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
from ray.data import DataContext

from jobs.make_dashboard import SHIPPED, dashboard
from raytrain.cluster import PLACEMENT_GROUP_CLEANER_LOGGER
from raytrain.config.sections import RunConfig
from raytrain.observe.console import Progress, eta, quiet_ray_data, use_bar
from raytrain.observe.ray_metrics import METRICS, step_series


def test_plain_lines_are_periodic_with_count_and_eta(capsys, monkeypatch):
    now = [0.0]
    monkeypatch.setattr("raytrain.observe.console.time.perf_counter", lambda: now[0])
    progress = Progress(4, "[evaluate]", bar=False, unit="batch", every_s=30.0)
    for t, text in ((1.0, ""), (2.0, ""), (40.0, "acc 0.5"), (41.0, "")):
        now[0] = t  # a line at 40 s (30 s after the start) and at the end, none before
        progress.update(1, text)
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    assert out.splitlines() == ["[evaluate] 3/4 | acc 0.5 | 13.3s/batch ETA 0:00:13", "[evaluate] 4/4 | 10.2s/batch ETA 0:00:00"]
    assert eta(3725) == "1:02:05"


def test_bar_or_lines_by_config_and_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert not use_bar(RunConfig()) and use_bar(RunConfig(console="bar")) and not use_bar(RunConfig(console="lines"))
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert use_bar(RunConfig()) and not use_bar(RunConfig(console="lines"))


@pytest.mark.parametrize("wanted", [False, True])
def test_ray_data_progress_bars_follow_the_config(wanted):
    ctx = DataContext.get_current()
    before = ctx.enable_progress_bars, ctx.enable_operator_progress_bars
    try:
        quiet_ray_data(RunConfig(ray_progress_bars=wanted))
        assert (ctx.enable_progress_bars, ctx.enable_operator_progress_bars) == (wanted, wanted)
    finally:
        ctx.enable_progress_bars, ctx.enable_operator_progress_bars = before


def test_every_step_figure_maps_to_a_declared_metric_and_the_dashboard_is_current():
    record = {"step": 3, "loss": 0.5, "reward/format": 1.0, "reward/accuracy/face_swap": 0.75, "groups_kept": 2,
              "time/idle_s": 0.1, "throughput/rollout_tokens_per_s": 99.0, "clip_frac": 0.1, "weight_sync/bytes": 1024}
    series = step_series(record)
    assert len(series) == len(record) and all(METRICS[name].source == "trainer" for name, _, _ in series)
    assert ("deepfake_rl_accuracy_by_category", {"category": "face_swap"}, 0.75) in series
    assert ("deepfake_rl_update", {"stat": "clip_frac"}, 0.1) in series
    assert all(set(tags) <= set(METRICS[name].tag_keys) for name, tags, _ in series)
    # The shipped Grafana dashboard is the one built from the declarations (rebuild: python -m jobs.make_dashboard).
    assert json.loads(SHIPPED.read_text()) == json.loads(json.dumps(dashboard()))


def test_an_embedded_ray_without_a_dashboard_quiets_ray_trains_placement_group_cleaner(ray_local):
    # Without the dashboard's state API the cleaner would warn once a second for a whole run (raytrain.cluster).
    assert importlib.util.find_spec(PLACEMENT_GROUP_CLEANER_LOGGER), "Ray Train moved its cleaner: update the logger name"

    @ray_local.remote(num_cpus=0)
    def cleaner_level() -> int:
        return logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).getEffectiveLevel()

    assert ray_local.get(cleaner_level.remote()) == logging.ERROR
