"""Joining Ray: the cluster `ray job submit` names, or an embedded local Ray. The one place a job starts Ray."""

from __future__ import annotations

import logging
import os

import ray

from raytrain.config.sections import ClusterConfig


def init_ray(cluster: ClusterConfig | None = None, *, num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (`ray job submit` sets it), else start an embedded local Ray.

    `num_cpus` (else `cluster.num_cpus`, else at least 8) sizes the embedded Ray: logical CPUs above the
    physical count let actors, workers and decode tasks share a small machine. Its dashboard, when
    `cluster.dashboard` asks for one, binds to 127.0.0.1 (without one, `quiet_placement_group_cleaner`).
    Its metrics endpoint takes `cluster.metrics_export_port` when set (Ray binds it on the node's
    interfaces, as `ray start` does).
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    dashboard = (cluster or ClusterConfig()).dashboard
    ray.init(
        address="local",  # never silently join some other Ray left running on this machine
        num_cpus=num_cpus or local_cpus(cluster),
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=None if dashboard else {"worker_process_setup_hook": f"{__name__}.{quiet_placement_group_cleaner.__name__}"},
        **({"_metrics_export_port": cluster.metrics_export_port} if cluster and cluster.metrics_export_port else {}),
    )


# Ray Train's placement-group cleaner asks the state API, which the dashboard serves, whether the training
# controller lives, and without a dashboard warns that it cannot, once a second for the whole run. An embedded
# Ray ends with this process, placement groups and all, so it has nothing to clean there.
PLACEMENT_GROUP_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_placement_group_cleaner() -> None:
    """Ray's `worker_process_setup_hook` of an embedded Ray without a dashboard: only the cleaner's errors show."""
    logging.getLogger(PLACEMENT_GROUP_CLEANER_LOGGER).setLevel(logging.ERROR)


def local_cpus(cluster: ClusterConfig | None) -> int:
    """Logical CPUs of the embedded local Ray."""
    return (cluster and cluster.num_cpus) or max(8, os.cpu_count() or 1)


def node_resources() -> list[dict[str, float]]:
    """Each live node's total resources in the Ray this process has joined."""
    return [n["Resources"] for n in ray.nodes() if n["Alive"]]


def planned_nodes(cluster: ClusterConfig | None) -> list[dict[str, float]]:
    """The nodes a job would run on, without starting anything: the cluster named by RAY_ADDRESS (joined
    to read them), else the embedded local Ray's one node (its CPUs, and the GPUs this machine shows)."""
    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        init_ray(cluster)
        return node_resources()
    import torch

    return [{"CPU": float(local_cpus(cluster)), "GPU": float(torch.cuda.device_count())}]
