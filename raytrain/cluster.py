"""Joining Ray: the cluster `ray job submit` names, or an embedded local Ray. The one place a job starts Ray."""

from __future__ import annotations

import os

import ray

from raytrain.config.sections import ClusterConfig


def init_ray(cluster: ClusterConfig | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (`ray job submit` sets it), else start an embedded local Ray.

    `num_cpus` (else `cluster.num_cpus`, else at least 8) sizes the embedded Ray: logical CPUs above the
    physical count let actors, workers and decode tasks share a small machine. Its dashboard, when
    `cluster.dashboard` asks for one, binds to 127.0.0.1. Its metrics endpoint takes
    `cluster.metrics_export_port` when set (Ray binds it on the node's interfaces, as `ray start` does).
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    cluster = cluster or ClusterConfig()
    ray.init(
        address="local",  # never silently join some other Ray left running on this machine
        num_cpus=num_cpus or cluster.num_cpus or max(8, os.cpu_count() or 1),
        include_dashboard=cluster.dashboard,
        dashboard_host="127.0.0.1",
        **({"_metrics_export_port": cluster.metrics_export_port} if cluster.metrics_export_port else {}),
    )
