"""What a run asks of the cluster, role by role, and whether a cluster can hold it: plain arithmetic
on a `Config` (no Ray), so a job prints its placement (`--dry-run`) and refuses at start a run whose
actors would otherwise wait for resources forever.

Ray schedules each actor on one node: every request must fit a node, and all of them the cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from raytrain.config import Config


class PlacementError(ValueError):
    """The cluster cannot hold every role of the run at once."""


@dataclass(frozen=True)
class Role:
    name: str
    count: int
    cpus: float  # per actor or worker
    gpus: float
    note: str = ""

    @property
    def total_cpus(self) -> float:
        return self.count * self.cpus

    @property
    def total_gpus(self) -> float:
        return self.count * self.gpus


def worker_gpu_share(cfg: Config) -> float:
    """A training worker's GPUs: a whole GPU, or what a colocated rollout engine leaves of it (Ray packs
    the fractional requests of workers and engines onto shared GPUs); 0 on CPU."""
    if not cfg.train.use_gpu:
        return 0.0
    return 1 - cfg.rollout.num_gpus if cfg.rollout.vllm.mode == "colocated" else 1.0


# The reward actor's own CPU request (`actors.reward.RewardActor`) and each Ray Data decode actor's.
REWARD_CPUS = 0.5
DECODE_CPUS = 0.5


def roles(cfg: Config, needs_rollouts: bool) -> list[Role]:
    """Every actor and worker group a training run starts, with its requests (Ray Train's controller asks for none)."""
    t, r, rw = cfg.train, cfg.rollout, cfg.reward
    colocated = needs_rollouts and r.colocate  # the workers generate: no rollout engines
    out = [Role("training workers", t.num_workers, t.cpus_per_worker, worker_gpu_share(cfg),
                f"ZeRO-{t.zero_stage}" + (", optimizer on CPU" if t.offload_optimizer == "cpu" else "")
                + (", colocated rollouts" if colocated else ""))]
    if needs_rollouts:
        if not colocated:
            note = f"{r.engine}" + (f", {r.vllm.mode}" if r.engine == "vllm" else "")
            out.append(Role("rollout engines", r.num_actors, r.num_cpus, r.num_gpus, note))
        paragraph = rw.enabled("paragraph")
        encoder = paragraph and rw.paragraph.encoder is not None
        out.append(Role("reward actor", 1, REWARD_CPUS, rw.paragraph.num_gpus if paragraph else 0.0,
                        "with the CLIP encoder" if encoder else ""))
        if rw.enabled("thinking"):
            j = rw.judge
            out.append(Role("thinking judge", j.num_actors, j.num_cpus, j.num_gpus, j.model.path if j.model else ""))
    out.append(Role("data decode", cfg.data.decode_concurrency, DECODE_CPUS, 0.0, "Ray Data actors"))
    return out


def totals(plan: Sequence[Role]) -> tuple[float, float]:
    return sum(r.total_cpus for r in plan), sum(r.total_gpus for r in plan)


def shortfalls(plan: Sequence[Role], nodes: Sequence[dict[str, float]]) -> list[str]:
    """Why `nodes` (each node's total resources, Ray's `CPU`/`GPU` keys) cannot hold `plan`; [] when they can."""
    have_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    have_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    cpus, gpus = totals(plan)
    out = []
    if gpus > have_gpus + 1e-9:
        out.append(f"{_num(gpus)} GPUs asked, the cluster has {_num(have_gpus)}")
    if cpus > have_cpus + 1e-9:
        out.append(f"{_num(cpus)} CPUs asked, the cluster has {_num(have_cpus)}")
    for r in plan:
        if r.count and not any(r.cpus <= n.get("CPU", 0.0) + 1e-9 and r.gpus <= n.get("GPU", 0.0) + 1e-9 for n in nodes):
            out.append(f"no node has the {_num(r.cpus)} CPUs and {_num(r.gpus)} GPUs one of the {r.name} asks for")
    return out


def _num(x: float) -> str:
    return f"{x:g}"


def describe(plan: Sequence[Role], nodes: Sequence[dict[str, float]] | None = None) -> str:
    """The placement table: each role's count and requests, the total and (given `nodes`) what the cluster has."""
    lines = [f"{'role':<18}{'count':>6}{'CPUs each':>11}{'GPUs each':>11}{'CPUs':>7}{'GPUs':>7}  note"]
    for r in plan:
        lines.append(f"{r.name:<18}{r.count:>6}{_num(r.cpus):>11}{_num(r.gpus):>11}{_num(r.total_cpus):>7}"
                     f"{_num(r.total_gpus):>7}  {r.note}".rstrip())
    cpus, gpus = totals(plan)
    lines.append(f"{'total':<46}{_num(cpus):>7}{_num(gpus):>7}")
    if nodes is not None:
        have = f"{_num(sum(n.get('CPU', 0.0) for n in nodes)):>7}{_num(sum(n.get('GPU', 0.0) for n in nodes)):>7}"
        lines.append(f"{f'cluster ({len(nodes)} node' + ('s' if len(nodes) != 1 else '') + ')':<46}{have}")
        missing = shortfalls(plan, nodes)
        lines.append("fits: yes" if not missing else "fits: NO: " + "; ".join(missing))
    return "\n".join(lines)


def check(plan: Sequence[Role], nodes: Sequence[dict[str, float]]) -> None:
    """Raise `PlacementError` naming what each role asks for when `nodes` cannot hold `plan`."""
    missing = shortfalls(plan, nodes)
    if missing:
        asks = ", ".join(f"{r.name} {r.count} x ({_num(r.cpus)} CPU, {_num(r.gpus)} GPU)" for r in plan if r.count)
        raise PlacementError(f"the cluster cannot hold this run: {'; '.join(missing)}. Asked: {asks}")
