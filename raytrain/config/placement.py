"""What a run asks of the cluster, role by role, and whether a cluster can hold it: plain arithmetic
on a `Config` (no Ray), so a job prints its placement (`--dry-run`) and refuses at start a run whose
actors would otherwise wait for resources forever.

Ray schedules each actor on one node: every request must fit a node, and all of them the cluster.
A custom resource (`train.resources`, `rollout.resources`, ...) is counted the same way, and one that no
node has at all is named with what the cluster has: Ray would keep such an actor pending forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from raytrain.config import Config
from raytrain.config.sections import RAY_BUILTIN_RESOURCES


class PlacementError(ValueError):
    """The cluster cannot hold every role of the run at once."""


@dataclass(frozen=True)
class Role:
    name: str
    count: int
    cpus: float  # per actor or worker
    gpus: float
    note: str = ""
    resources: Mapping[str, float] = field(default_factory=dict)  # custom Ray resources per actor or worker

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
                + (", colocated rollouts" if colocated else ""), t.resources)]
    if needs_rollouts:
        if not colocated:
            note = f"{r.engine}" + (f", {r.vllm.mode}" if r.engine == "vllm" else "")
            out.append(Role("rollout engines", r.num_actors, r.num_cpus, r.num_gpus, note, r.resources))
        paragraph = rw.enabled("paragraph")
        encoder = paragraph and rw.paragraph.encoder is not None
        out.append(Role("reward actor", 1, REWARD_CPUS, rw.paragraph.num_gpus if paragraph else 0.0,
                        "with the CLIP encoder" if encoder else "", rw.resources))
        if rw.enabled("thinking"):
            j = rw.judge
            out.append(Role("thinking judge", j.num_actors, j.num_cpus, j.num_gpus, j.model.path if j.model else "", j.resources))
    out.append(Role("data decode", cfg.data.decode_concurrency, DECODE_CPUS, 0.0, "Ray Data tasks"))
    return out


def totals(plan: Sequence[Role]) -> tuple[float, float]:
    return sum(r.total_cpus for r in plan), sum(r.total_gpus for r in plan)


def custom_totals(nodes: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each custom resource of `nodes` (every key but Ray's CPU, GPU and memory ones) summed over them."""
    out: dict[str, float] = {}
    for n in nodes:
        for key, amount in n.items():
            if key not in RAY_BUILTIN_RESOURCES:
                out[key] = out.get(key, 0.0) + amount
    return out


def shortfalls(plan: Sequence[Role], nodes: Sequence[Mapping[str, float]]) -> list[str]:
    """Why `nodes` (each node's total resources, as Ray reports them: `CPU`, `GPU` and custom keys) cannot
    hold `plan`; [] when they can."""
    have_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    have_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    have_custom = custom_totals(nodes)
    cpus, gpus = totals(plan)
    out = []
    if gpus > have_gpus + 1e-9:
        out.append(f"{_num(gpus)} GPUs asked, the cluster has {_num(have_gpus)}")
    if cpus > have_cpus + 1e-9:
        out.append(f"{_num(cpus)} CPUs asked, the cluster has {_num(have_cpus)}")
    absent: set[str] = set()  # named once, with what the cluster has; a role asking for one is not also said not to fit
    asked: dict[str, float] = {}
    for r in plan:
        for key, amount in r.resources.items() if r.count else ():
            if key not in have_custom and key not in absent:
                absent.add(key)
                out.append(f"no node has the custom resource {key!r} the {r.name} ask for; the cluster has {_listing(have_custom)}")
            asked[key] = asked.get(key, 0.0) + r.count * amount
    for key, amount in asked.items():
        if key not in absent and amount > have_custom[key] + 1e-9:
            out.append(f"{_num(amount)} {key!r} asked, the cluster has {_num(have_custom[key])}")
    for r in plan:
        if r.count and not absent & set(r.resources) and not any(_fits(r, n) for n in nodes):
            out.append(f"no node has the {_request(r)} one of the {r.name} asks for")
    return out


def _fits(role: Role, node: Mapping[str, float]) -> bool:
    want = {"CPU": role.cpus, "GPU": role.gpus, **role.resources}
    return all(amount <= node.get(key, 0.0) + 1e-9 for key, amount in want.items())


def _amounts(resources: Mapping[str, float]) -> str:
    """Custom resources in words, by name: `rollout 1, trainer 2`."""
    return ", ".join(f"{k} {_num(v)}" for k, v in sorted(resources.items()))


def _request(role: Role) -> str:
    """One actor's request in words: `4 CPUs and 1 GPUs`, with its custom resources `1 CPUs, 0 GPUs and trainer 1`."""
    base = f"{_num(role.cpus)} CPUs"
    return f"{base}, {_num(role.gpus)} GPUs and {_amounts(role.resources)}" if role.resources else f"{base} and {_num(role.gpus)} GPUs"


def _listing(custom: Mapping[str, float]) -> str:
    # Ray gives every node a `node:<ip>` resource of 1 (and the head `node:__internal_head__`): left out as noise.
    shown = {k: v for k, v in custom.items() if not k.startswith("node:")}
    return f"custom resources {_amounts(shown)}" if shown else "no custom resources"


def _num(x: float) -> str:
    return f"{x:g}"


def describe(plan: Sequence[Role], nodes: Sequence[Mapping[str, float]] | None = None) -> str:
    """The placement table: each role's count and requests (custom resources each in the note), the total
    and (given `nodes`) what the cluster has."""
    lines = [f"{'role':<18}{'count':>6}{'CPUs each':>11}{'GPUs each':>11}{'CPUs':>7}{'GPUs':>7}  note"]
    for r in plan:
        note = "; ".join(x for x in (r.note, r.resources and f"custom: {_amounts(r.resources)}") if x)
        lines.append(f"{r.name:<18}{r.count:>6}{_num(r.cpus):>11}{_num(r.gpus):>11}{_num(r.total_cpus):>7}"
                     f"{_num(r.total_gpus):>7}  {note}".rstrip())
    cpus, gpus = totals(plan)
    lines.append(f"{'total':<46}{_num(cpus):>7}{_num(gpus):>7}")
    if nodes is not None:
        have = f"{_num(sum(n.get('CPU', 0.0) for n in nodes)):>7}{_num(sum(n.get('GPU', 0.0) for n in nodes)):>7}"
        lines.append(f"{f'cluster ({len(nodes)} node' + ('s' if len(nodes) != 1 else '') + ')':<46}{have}")
        missing = shortfalls(plan, nodes)
        lines.append("fits: yes" if not missing else "fits: NO: " + "; ".join(missing))
    return "\n".join(lines)


def check(plan: Sequence[Role], nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise `PlacementError` naming what each role asks for when `nodes` cannot hold `plan`."""
    missing = shortfalls(plan, nodes)
    if missing:
        asks = ", ".join(f"{r.name} {r.count} x ({_num(r.cpus)} CPU, {_num(r.gpus)} GPU"
                         + (f", {_amounts(r.resources)}" if r.resources else "") + ")" for r in plan if r.count)
        raise PlacementError(f"the cluster cannot hold this run: {'; '.join(missing)}. Asked: {asks}")
