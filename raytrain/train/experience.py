"""A step's experience on one rank: prompts from its shard, rollouts and their rewards, and the
training batch they make (SPEC sections 4 and 5).

Each data-parallel rank streams its own Ray Data shard and asks its rollouts (a rollout actor, or with
`rollout.colocate` its own live module) for G samples per prompt and the reward actor for scores. Under
`rollout.mode: async` a step's first generation round may have been submitted steps ahead (`RolloutsAhead`). DAPO keeps only informative groups (dynamic sampling) until
the rank has its quota; the batch carries the sampling log-probs and the per-token advantages of the
estimator the algorithm names (`raytrain.algos.advantages`). SFT's batch is the next prompts with
their targets (`raytrain.data.sft_targets`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import ray
import torch

from raytrain.algos.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, informative_groups
from raytrain.algos.paragraph_tokens import paragraph_token_masks, token_char_spans
from raytrain.config import Config
from raytrain.config.sections import SamplingConfig
from raytrain.data.batch import Prompt, Refusal, Sample, TrainBatch, response_positions
from raytrain.data.pipeline import prompts_from_batch
from raytrain.data.sft_targets import sft_batch
from rewards.score import Score


@dataclass
class Group:
    prompt: Prompt
    samples: list[Sample]
    scores: list[Score]


class PromptFeed:
    """Prompts from this rank's shard, one at a time, skipping consumed keys and recording undecodable media."""

    def __init__(self, shard, batch_size: int, consumed: set[str]):
        self._batches = iter(shard.iter_batches(batch_size=batch_size, batch_format="numpy"))
        self._buffer: list[Prompt] = []
        self._consumed = consumed
        self.drawn: list[str] = []
        self.in_flight: set[str] = set()  # drawn keys whose groups are still being generated (`RolloutsAhead`)
        self.skipped: list[dict] = []
        self.exhausted = False

    def take(self, n: int) -> list[Prompt]:
        while len(self._buffer) < n and not self.exhausted:
            try:
                prompts, skipped = prompts_from_batch(next(self._batches))
            except StopIteration:
                self.exhausted = True
                break
            self.skipped += [s for s in skipped if s["key"] not in self._consumed]
            self.drawn += [s["key"] for s in skipped if s["key"] not in self._consumed]
            self._buffer += [p for p in prompts if p.key not in self._consumed]
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        self.drawn += [p.key for p in out]
        return out

    def settled(self) -> list[str]:
        """The drawn keys a checkpoint records as consumed (trained, dropped or skipped): not those still in
        flight, which are not trained yet and which a resume draws again."""
        return [k for k in self.drawn if k not in self.in_flight]

    def refused(self, prompt: Prompt, refusal: Refusal) -> None:
        """A drawn prompt the rollout engine could not serve: skipped like undecodable media."""
        self.skipped.append({"key": prompt.key, "path": prompt.path, "reason": refusal.reason})


def least_loaded(loads: list[int], rank: int) -> int:
    """The pool index for a rank's next generate call: the fewest calls running, ties to the rank's own
    actor (`rank % n`) and then the ones after it, so that equal ranks spread evenly over the pool."""
    n = len(loads)
    return min(range(n), key=lambda i: (loads[i], (i - rank) % n))


class ActorRollouts:
    """A rank's view of the shared pool of rollout actors: each generate call goes to the actor running the
    fewest of this rank's calls (`least_loaded`), so any rank's prompts reach any engine and the pool's size
    (`rollout.num_actors`) is independent of the training workers. Every call is submitted at once, so the
    actors generate the next calls while the reward actor scores the one before."""

    def __init__(self, actors: list, rank: int = 0):
        self.actors, self.rank = list(actors), rank
        self._running: list[list[ray.ObjectRef]] = [[] for _ in self.actors]

    def submit(self, calls: list[list[Prompt]], sampling: SamplingConfig) -> list[ray.ObjectRef]:
        refs = []
        for call in calls:
            for running in self._running:  # forget the calls that finished
                if running:
                    running[:] = ray.wait(running, num_returns=len(running), timeout=0)[1]
            i = least_loaded([len(r) for r in self._running], self.rank)
            refs.append(self.actors[i].generate.remote(call, sampling))
            self._running[i].append(refs[-1])
        return refs

    def generate(self, calls: list[list[Prompt]], sampling: SamplingConfig) -> Iterator[list[list[Sample] | Refusal]]:
        """Each call's groups, in order."""
        return self.results(self.submit(calls, sampling))

    @staticmethod
    def results(refs: list[ray.ObjectRef]) -> Iterator[list[list[Sample] | Refusal]]:
        return (ray.get(ref) for ref in refs)


class LocalRollouts:
    """An engine in the rank's own process (`rollout.colocate`: `LiveModuleEngine` on the live module). A
    call generates when its groups are asked for, so the reward actor scores the call before meanwhile."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, calls: list[list[Prompt]], sampling: SamplingConfig) -> Iterator[list[list[Sample] | Refusal]]:
        return (self.engine.generate(call, sampling) for call in calls)


class RolloutsAhead:
    """`rollout.mode: async`: the first generation round of each of a rank's next `depth` steps
    (`algorithm.max_staleness`), submitted to its rollout actor before the rank trains, so that the actor
    generates them with the newest weights it has while the trainers update. A round submitted while the
    trainer is at version v is trained at version v + depth or before (v + 1 for one-step-off), and its
    samples come from version v or later: never more than `depth` versions old. Its prompts are in flight
    (`PromptFeed.in_flight`) until the step that trains them takes them."""

    def __init__(self, depth: int):
        self.depth = depth
        self._rounds: deque[tuple[list[list[Prompt]], list[ray.ObjectRef]]] = deque()

    @classmethod
    def for_config(cls, cfg: Config) -> RolloutsAhead | None:
        """The queue of `rollout.mode: async` with k > 0; None otherwise: k = 0 runs the synchronous step itself."""
        k = cfg.algorithm.max_staleness
        return cls(k) if cfg.rollout.mode == "async" and k > 0 else None

    def __len__(self) -> int:
        return len(self._rounds)

    def fill(self, cfg: Config, feed: PromptFeed, rollout: ActorRollouts, steps_left: float) -> None:
        """Submit first rounds until `depth` of them, or one per step left after this one, are in flight."""
        while len(self._rounds) < min(self.depth, steps_left):
            prompts = feed.take(cfg.train.prompts_per_worker)
            if not prompts:
                return
            feed.in_flight.update(p.key for p in prompts)
            calls = _calls(cfg, prompts)
            self._rounds.append((calls, rollout.submit(calls, cfg.rollout.sampling)))

    def take(self, feed: PromptFeed, rollout: ActorRollouts) -> tuple[list[list[Prompt]], Iterator] | None:
        """The oldest round's calls and their groups (as `ActorRollouts.generate`), or None when none is in flight."""
        if not self._rounds:
            return None
        calls, refs = self._rounds.popleft()
        feed.in_flight.difference_update(p.key for call in calls for p in call)
        return calls, rollout.results(refs)


def _calls(cfg: Config, prompts: list[Prompt]) -> list[list[Prompt]]:
    """Prompts in generate calls of `rollout.prompts_per_call`."""
    per_call = cfg.rollout.prompts_per_call
    return [prompts[i:i + per_call] for i in range(0, len(prompts), per_call)]


def collect_rollouts(cfg: Config, feed: PromptFeed, rollout: ActorRollouts | LocalRollouts, reward_actor,
                     version: int, ahead: RolloutsAhead | None = None) -> tuple[list[Group], dict]:
    """DAPO dynamic sampling: draw prompts until `prompts_per_worker` informative groups or the round limit.
    `ahead`: the first round is the one submitted earliest (`rollout.mode: async`), when there is one.

    Returns the kept groups and this rank's stats: `rollout_stats` over every drawn group, the
    policy version that generated them, the group counts, and the rank's own seconds spent waiting
    for the data shard's prompts (`time/data_s`) and for the scores once generation was done
    (`time/reward_s`: scoring that generation did not hide)."""
    algo, want = cfg.algorithm, cfg.train.prompts_per_worker
    kept: list[Group] = []
    drawn = dropped = nonfinite = rounds = 0
    data_s = reward_s = 0.0
    all_groups: list[Group] = []
    while len(kept) < want and rounds < algo.max_generation_rounds:
        submitted = ahead.take(feed, rollout) if ahead is not None and rounds == 0 else None
        if submitted is None:
            t0 = time.perf_counter()
            prompts = feed.take(want - len(kept))
            data_s += time.perf_counter() - t0
            if not prompts:
                break
            # Prompts go to the engine in calls of `rollout.prompts_per_call`, and each call's groups go to
            # the reward actor as soon as they exist: scoring (judge, encoder) runs while the engine
            # generates the next call's prompts.
            calls = _calls(cfg, prompts)
            submitted = calls, rollout.generate(calls, cfg.rollout.sampling)
        rounds += 1
        served, samples, scoring = [], [], []
        for call, generated in zip(*submitted):
            for prompt, group in zip(call, generated):
                if isinstance(group, Refusal):
                    feed.refused(prompt, group)
                    continue
                _check_staleness(group, version, algo.max_staleness)
                served.append(prompt)
                samples.append(group)
                scoring.append(_submit_scoring(cfg, reward_actor, prompt, group))
        t0 = time.perf_counter()
        scores = [sc for prompt, group, ref in zip(served, samples, scoring) for sc in scored(cfg, reward_actor, prompt, group, ref)]
        reward_s += time.perf_counter() - t0
        g = cfg.rollout.sampling.group_size
        groups, bad = finite_groups([Group(p, samples[i], scores[i * g:(i + 1) * g]) for i, p in enumerate(served)])
        if bad:
            print(f"[train] dropped {bad} group(s) with a NaN or infinite reward", flush=True)
        nonfinite += bad
        all_groups += groups
        drawn += len(groups) + bad
        if algo.dynamic_sampling:
            metric = torch.tensor([sc.scalars()[algo.filter_metric] for grp in groups for sc in grp.scores])
            informative = informative_groups(metric, g).tolist()
            dropped += informative.count(False)
            groups = [grp for grp, ok in zip(groups, informative) if ok]
        kept += groups
    stats = rollout_stats(all_groups)
    # The oldest policy version that generated this rank's rollouts (all equal while max_staleness is 0);
    # `rollout_version_min` is reduced by min over the ranks (`raytrain.train.metrics.sum_by_key`).
    stats["rollout_version"] = min((s.version for grp in all_groups for s in grp.samples), default=-1)
    if all_groups:
        stats["rollout_version_min"] = stats["rollout_version"]
    stats.update({"groups_drawn": drawn, "groups_dropped": dropped, "groups_kept": len(kept), "generation_rounds": rounds,
                  "groups_nonfinite": nonfinite, "time/data_s": data_s, "time/reward_s": reward_s})
    return kept, stats


def finite_groups(groups: list[Group]) -> tuple[list[Group], int]:
    """The groups whose every score is finite (`Score.finite`), and how many were dropped for a NaN or
    infinite reward: they never reach the advantages, the loss or the step's reward metrics."""
    kept = [grp for grp in groups if all(sc.finite() for sc in grp.scores)]
    return kept, len(groups) - len(kept)


def _check_staleness(group: list[Sample], version: int, max_staleness: int) -> None:
    stale = max(version - s.version for s in group)
    if stale < 0:
        raise RuntimeError(f"rollouts come from policy version {version - stale}, ahead of the trainer's {version}")
    if stale > max_staleness:
        raise RuntimeError(f"rollouts are {stale} versions behind the trainer (max_staleness={max_staleness}); "
                           "a restarted rollout actor serves its initial weights until training resumes "
                           "from the last checkpoint and re-sends them")


def scored(cfg: Config, reward_actor, prompt: Prompt, group: list[Sample], ref: ray.ObjectRef) -> list[Score]:
    """The group's scores from the scoring call `ref`. A call whose scorer raised is sent again, up to
    `train.actor_restarts` times; after that the step fails with the reward actor's own error. (An actor
    that died is Ray's to restart: its error goes up at once, and the run fails over to the last checkpoint.)"""
    retries = 0
    while True:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            retries += 1
            if retries > cfg.train.actor_restarts:
                raise
            print(f"[train] reward actor raised scoring {prompt.path} ({type(err.cause).__name__}: {err.cause}); "
                  f"retry {retries} of {cfg.train.actor_restarts}", flush=True)
            ref = _submit_scoring(cfg, reward_actor, prompt, group)


def _submit_scoring(cfg: Config, reward_actor, prompt: Prompt, group: list[Sample]) -> ray.ObjectRef:
    n, media = len(group), ("video" if prompt.is_video else "image")
    return reward_actor.score.remote(
        [s.text for s in group], [len(s.token_ids) for s in group], [prompt.label] * n,
        modes=[prompt.mode] * n, media=[(prompt.path, media)] * n, questions=[cfg.data.prompt.format(media=media)] * n,
    )


def rollout_stats(groups: list[Group]) -> dict:
    """Sums over every sampled response (kept or dropped): the policy's actual behaviour. `reward_sums`
    holds each of the scores' scalars (`Score.scalars`); the accuracy is also summed per category."""
    scalars = [sc.scalars() for grp in groups for sc in grp.scores]
    samples = [s for grp in groups for s in grp.samples]
    correct: dict[str, float] = {}
    scored: dict[str, float] = {}
    for grp in groups:
        for sc in grp.scores:
            if "accuracy" in sc.components:
                category = grp.prompt.category
                correct[category] = correct.get(category, 0.0) + sc.components["accuracy"]
                scored[category] = scored.get(category, 0.0) + 1
    return {
        "reward_sums": {name: sum(s[name] for s in scalars) for name in (scalars[0] if scalars else ())},
        "accuracy_by_category": correct,
        "responses_by_category": scored,
        "responses": len(samples),
        "response_tokens_sum": sum(len(s.token_ids) for s in samples),
        "truncated_sum": sum(s.truncated for s in samples),
    }


def rollout_metrics(totals: dict) -> dict:
    """The step's rollout metrics from every rank's `collect_rollouts` stats summed by key: counts, means
    over the sampled responses, and `reward/accuracy/<category>` (ranks see different categories)."""
    responses = max(totals["responses"], 1.0)
    metrics = {k: int(totals[k]) for k in ("responses", "groups_drawn", "groups_dropped", "groups_kept", "generation_rounds",
                                           "groups_nonfinite")}
    metrics["response_tokens_mean"] = totals["response_tokens_sum"] / responses
    metrics["truncated_mean"] = totals["truncated_sum"] / responses
    metrics.update({f"reward/{name}": total / responses for name, total in totals["reward_sums"].items()})
    correct, scored = totals["accuracy_by_category"], totals["responses_by_category"]
    metrics.update({f"reward/accuracy/{c}": correct[c] / n for c, n in sorted(scored.items()) if n})
    return metrics


def rl_batch(cfg: Config, groups: list[Group], tokenizer, *, estimator: str, paragraphs: bool) -> TrainBatch | None:
    """The groups' responses with their sampling log-probs, loss mask (overlong filtering) and the advantages
    of `estimator` (`ADVANTAGE_ESTIMATORS`); `paragraphs`: with PRPO's paragraph tensors (`paragraph_tensors`)."""
    if not groups:
        return None
    samples = [s for grp in groups for s in grp.samples]
    prompts, responses = [grp.prompt for grp in groups for _ in grp.samples], [s.token_ids for s in samples]
    response_mask = response_positions(prompts, responses)
    old = torch.zeros_like(response_mask)
    mask = response_mask.clone()
    for i, s in enumerate(samples):
        old[i, response_mask[i].nonzero().squeeze(-1)] = torch.tensor(s.logprobs)
        if cfg.algorithm.overlong_filter and s.truncated:
            mask[i] = 0
    scores = [sc for grp in groups for sc in grp.scores]
    inputs = AdvantageInputs(torch.tensor([sc.total for sc in scores]), cfg.rollout.sampling.group_size, response_mask)
    if paragraphs:
        inputs.paragraph_rewards, inputs.paragraph_token_masks = paragraph_tensors(samples, scores, response_mask, tokenizer)
    advantages = ADVANTAGE_ESTIMATORS[estimator](inputs, cfg.algorithm)
    return TrainBatch(prompts, responses, {"old_logprobs": old, "advantages": advantages, "loss_mask": mask})


def paragraph_tensors(samples: list[Sample], scores: list[Score], response_mask: torch.Tensor,
                      tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """PRPO inputs: paragraph rewards [B, K] and, through each sampled token's character span in the
    response text, the paragraphs' token masks [B, K, T] at the batch's response positions."""
    k = max(1, max(len(sc.paragraphs) for sc in scores))
    rewards = torch.zeros(len(samples), k)
    masks = torch.zeros(len(samples), k, response_mask.shape[1], dtype=torch.bool)
    for i, (sample, sc) in enumerate(zip(samples, scores)):
        if not sc.paragraphs:
            continue
        positions = response_mask[i].nonzero().squeeze(-1)
        token_masks = paragraph_token_masks([(p.start, p.end) for p in sc.paragraphs],
                                            token_char_spans(tokenizer, sample.token_ids))
        masks[i, : token_masks.shape[0], positions] = token_masks
        rewards[i, : token_masks.shape[0]] = torch.tensor([p.reward for p in sc.paragraphs])
    return rewards, masks


def supervised_batch(cfg: Config, feed: PromptFeed, tokenizer, end_id: int) -> tuple[TrainBatch | None, dict]:
    """SFT: the next `prompts_per_worker` prompts with their targets (`sft_batch`), and their count."""
    prompts = feed.take(cfg.train.prompts_per_worker)
    return sft_batch(cfg, prompts, tokenizer, end_id), {"prompts": len(prompts)}
