"""DAPO across several Ray nodes, and nodes lost mid-run (issue 17 items 1 and 2).

`ray.cluster_utils.Cluster` starts real raylets on this machine: a head with a few CPUs (the driver,
Ray Train's controller, the reward actor, Ray Data) and three worker nodes, each offering one custom
resource and the one CPU its role asks for, as `ray start --resources` would on real machines. With
`train.resources: {trainer: 1}` and `rollout.resources: {rollout: 1}` the two training workers and
the rollout actor each run on a node of their own. `run.output_dir` is on the local disk, which every
node here shares. The runs start from the session's warm-up model (`warm_model_dir`, trained on the
session's local Ray before this module shuts that down; later modules start it again).

Marked `chaos` (`make test-chaos`; `make test` runs it too)."""

from __future__ import annotations

import pytest
import ray
from ray.cluster_utils import Cluster

from raytrain.config import parse_config
from tests.helpers.dapo_runs import assert_weights_changed, dapo_config, train_breaking, trained_every_prompt_once

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

HEAD, TRAINER, ROLLOUT = "head", "trainer", "rollout"
HEAD_CPUS = 4  # the tiny run's unpinned roles: reward actor 0.5, Ray Data's decode tasks 2 x 0.5, its read tasks
NODE_ARGS = {"object_store_memory": 200 * 1024**2}  # the tiny model's buckets and batches; four nodes share the RAM
STEPS = 4  # of the node-loss run
# A node whose raylet is killed is declared dead after 3 missed health checks of 1 s (Ray's default waits ~15 s).
FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}


class Nodes:
    """The test's cluster and what each of its nodes is for (head, `trainer` or `rollout`), by node id."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.role = {cluster.head_node.node_id: HEAD}

    def add(self, role: str):
        node = self.cluster.add_node(num_cpus=1, resources={role: 1}, **NODE_ARGS)
        self.role[node.node_id] = role
        return node

    def actors(self, class_name: str, since: set[str] = frozenset(), state: str | None = None) -> list[dict]:
        """The GCS actor table's entries of `class_name` not in `since` (actor ids), in `state` if given: each
        with its current (for a dead actor, its last) node."""
        table = self.cluster.global_state.actor_table(None)
        return [a for i, a in table.items() if a["ActorClassName"] == class_name and i not in since
                and (state is None or a["State"] == state)]

    def actor_ids(self) -> set[str]:
        return set(self.cluster.global_state.actor_table(None))

    def replace(self, class_name: str) -> tuple[str, str] | None:
        """Lose the node of a live `class_name` actor (its raylet and every process on it killed, no graceful
        drain), then add a node with the same resources in its place. Returns (lost, new) node ids; None
        while no such actor is alive (a worker group between attempts)."""
        alive = self.actors(class_name, state="ALIVE")
        if not alive:
            return None
        lost_id = alive[0]["Address"]["NodeID"]
        # Only worker nodes this cluster started are ever removed (the head holds the driver).
        (lost,) = [n for n in self.cluster.worker_nodes if n.node_id == lost_id]
        self.cluster.remove_node(lost, allow_graceful=False)
        return lost_id, self.add(self.role[lost_id]).node_id


@pytest.fixture(scope="module")
def nodes():
    """A head and three worker nodes (two `trainer`, one `rollout`); the driver joins them. Shut down at the end."""
    ray.shutdown()  # a local Ray left by an earlier module (when run with it): this module's Ray is its cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False,
                                                            "_system_config": FAST_DEATH, **NODE_ARGS})
    try:
        placed = Nodes(cluster)
        for role in (TRAINER, TRAINER, ROLLOUT):
            placed.add(role)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield placed
    finally:
        ray.shutdown()
        cluster.shutdown()


def _pinned(raw: dict) -> dict:
    return {**raw, "train": {**raw["train"], "resources": {TRAINER: 1}}, "rollout": {**raw["rollout"], "resources": {ROLLOUT: 1}}}


def _roles_of(nodes: Nodes, actors: list[dict]) -> list[str]:
    return sorted(nodes.role[a["Address"]["NodeID"]] for a in actors)


def test_dapo_across_nodes_survives_lost_trainer_and_rollout_nodes_training_every_prompt_once(
        nodes, warm_model_dir, base_config_dict):
    # One run: each role on its own node, the weights synced across nodes every step, then two nodes lost.
    # Synchronous rollouts, ZeRO-2 (ZeRO-3 and the async mode have their own kill test in test_dapo.py).
    raw = _pinned(dapo_config(base_config_dict, warm_model_dir, total_steps=STEPS, checkpoint_every=1, max_failures=3, zero_stage=2))
    raw["data"] = {**raw["data"], "epochs": 6}  # dynamic sampling must not run the 16-row split dry before the last step
    cfg = parse_config(raw)
    before, lost = nodes.actor_ids(), {}

    def breaker(step: int) -> bool:
        """After the first checkpoint, lose a training worker's node; once the run resumed and checkpointed
        again, lose the rollout actor's node. Each time a node with the same resources joins in its place."""
        if TRAINER not in lost:
            replaced = nodes.replace("RayTrainWorker")
            if replaced:
                lost[TRAINER] = (*replaced, step)
        elif step > lost[TRAINER][2]:
            replaced = nodes.replace("RolloutActor")
            if replaced:
                lost[ROLLOUT] = (*replaced, step)
            return bool(replaced)
        return False

    final_model = train_breaking(cfg, breaker)
    assert_weights_changed(warm_model_dir, final_model)
    assert lost.get(TRAINER) and lost.get(ROLLOUT), f"not every node was lost: {lost}"
    assert lost[TRAINER][2] < STEPS and lost[ROLLOUT][2] < STEPS, lost  # both mid-run, before the last checkpoint

    _, final = trained_every_prompt_once(cfg, STEPS)
    # On-policy after both losses: every step was rolled out by the previous step's weights, so the
    # rollout actor Ray restarted on the new node got the checkpoint's weights before it generated.
    assert [final[s]["rollout_version"] for s in range(1, STEPS + 1)] == list(range(STEPS))

    # The worker group was started again with a worker on the node that replaced the lost one, and the
    # rollout actor is the same actor, restarted by Ray on its new node.
    workers = nodes.actors("RayTrainWorker", before)
    assert len(workers) > cfg.train.num_workers and lost[TRAINER][1] in {a["Address"]["NodeID"] for a in workers}
    assert lost[TRAINER][0] in {a["Address"]["NodeID"] for a in workers}  # the first attempt ran on the lost node
    (rollout,) = nodes.actors("RolloutActor", before)
    assert rollout["NumRestarts"] >= 1 and rollout["Address"]["NodeID"] == lost[ROLLOUT][1]
    # Where Ray put each role (the GCS actor table), in every attempt: the training workers on trainer
    # nodes (one per node: each offers one `trainer`), the rollout actor on the rollout node, the reward
    # actor on the head.
    assert {nodes.role[a["Address"]["NodeID"]] for a in workers} == {TRAINER}
    assert nodes.role[rollout["Address"]["NodeID"]] == ROLLOUT
    assert _roles_of(nodes, nodes.actors("RewardScorer", before)) == [HEAD]

