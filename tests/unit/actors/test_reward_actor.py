"""The reward actor's scoring with every component: a tiny judge actor on local Ray, a tiny CLIP, YAKE, real media.

The scorer runs in the test process (the remote `RewardActor` is the same class, exercised end to end by
tests/e2e/test_dapo.py); one judge actor serves every test, so only one extra process starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from actors.judge import start_judge_actors
from actors.reward import RewardScorer
from raytrain.config import parse_config
from raytrain.config.sections import JudgeConfig, ModelConfig, RewardConfig
from raytrain.data.batch import Prompt, Sample
from raytrain.data.media import load_frames
from raytrain.models.clip import ClipEncoder
from raytrain.models.thinking_judge import JudgeModel, JudgeRequest
from raytrain.models.tiny import save_tiny_clip
from raytrain.train.experience import scored
from rewards.paragraphs import make_keyphrase_extractor, paragraph_rewards, segment_paragraphs
from rewards.score import Score

JUDGE_SCORE = "0.7"


def _judge_config(path, **overrides) -> JudgeConfig:
    return JudgeConfig(model=ModelConfig(path=str(path), dtype="float32"),
                       media={"num_frames": 2, "max_pixels": 3136, "min_pixels": 784}, max_new_tokens=8, num_cpus=0.5,
                       prompt="Grade: {question} {response}", **overrides)


def _videos(synthetic_dir: Path) -> list[str]:
    return sorted(str(p) for p in (synthetic_dir / "train").rglob("*.mp4"))


@pytest.fixture(scope="module")
def judge_dir(tiny_model_dir, synthetic_dir, tmp_path_factory) -> Path:
    """The tiny VLM taught to answer `<answer>0.7</answer>` to any request: a judge whose score is known."""
    torch.set_num_threads(1)
    judge = JudgeModel(_judge_config(tiny_model_dir))
    videos = _videos(synthetic_dir)
    requests = [JudgeRequest("Is this video real or fake?", f"<think>look {i}</think><answer>fake</answer>", v)
                for i, v in enumerate(videos[:2])] + [JudgeRequest("Is it real?", "<think>x</think>", None)]
    tok = judge.family.tokenizer
    target = torch.tensor(tok(f"<answer>{JUDGE_SCORE}</answer><|im_end|>", add_special_tokens=False)["input_ids"])
    inputs = judge.encode(requests)
    target = target.expand(inputs["input_ids"].shape[0], -1)
    # Left padding: the target continues every row right after its generation prompt.
    inputs["input_ids"] = torch.cat([inputs["input_ids"], target], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(target)], 1)
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(target)], 1)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, -target.shape[1]:] = target
    model = judge.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = tmp_path_factory.mktemp("tiny-judge")
    model.save_pretrained(out)
    judge.family.processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def judges(judge_dir, ray_local):
    actors = start_judge_actors(_judge_config(judge_dir))
    yield actors
    for actor in actors:
        ray.kill(actor)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _reward_config(judge_dir, clip_dir, **judge) -> RewardConfig:
    return RewardConfig(
        weights={"format": 1.0, "overlong": 1.0, "accuracy": 1.0, "hybrid": 1.0, "thinking": 1.0, "paragraph": 1.0},
        max_len=64, overlong_buffer=16, judge=_judge_config(judge_dir, **judge),
        paragraph={"encoder": str(clip_dir), "media": {"num_frames": 4, "max_pixels": 3136, "min_pixels": 784}},
    )


CORRECT = ("<think>The jaw line shows a blending seam in the second frame.\n\n"
           "The lips drift out of sync with the face.</think>\n\n<answer>fake</answer>")
WRONG = "<think>Natural lighting and consistent skin texture everywhere.</think>\n\n<answer>real</answer>"
NO_THINK = "<think></think><answer>fake</answer>"


def test_reward_actor_scores_every_component(judges, judge_dir, clip_dir, synthetic_dir):
    scorer = RewardScorer(_reward_config(judge_dir, clip_dir), "word", judges=judges)
    video = _videos(synthetic_dir)[0]
    texts = [CORRECT, WRONG, NO_THINK, NO_THINK, ""]
    modes = ["think", "think", "no_think", "think", "think"]
    # Five responses of one prompt: one media decode and embedding shared by all.
    scores = scorer.score(texts, [10] * 5, ["fake"] * 5, modes=modes, media=[(video, "video")] * 5,
                          questions=["Is this video real or fake?"] * 5)

    correct, wrong, no_think_ok, think_empty, empty = scores
    # Correct think-mode answer: the judge is asked and says 0.7; thinking = min(1, 0.7).
    assert correct.judge_asked and not correct.judge_failed
    assert correct.components["thinking"] == pytest.approx(0.7)
    # Wrong answer: the judge is not asked.
    assert not wrong.judge_asked and wrong.components["thinking"] == 0.0 and wrong.components["accuracy"] == 0.0
    # no_think with an empty think obeys its mode; thinking is 0 under no_think without asking.
    assert no_think_ok.components["hybrid"] == 0.0 and not no_think_ok.judge_asked and no_think_ok.components["thinking"] == 0.0
    assert think_empty.components["hybrid"] == -1.0 and think_empty.judge_asked
    # Totals: format + overlong + accuracy + hybrid + thinking (paragraph is a vector, not summed).
    assert correct.total == pytest.approx(0 + 0 + 1 + 0 + 0.7)
    assert wrong.total == pytest.approx(0 + 0 + 0 + 0 + 0)
    assert empty.total == pytest.approx(-1 + 0 + 0 - 1 + 0) and empty.paragraphs == [] and empty.paragraph == 0.0

    # Paragraph rewards: the pure function with the same encoder, media and keyphrases.
    encoder = ClipEncoder(str(clip_dir))
    media_embedding = encoder.embed_frames(load_frames(video, "video", 4, max_pixels=3136, min_pixels=784))
    paragraphs = segment_paragraphs(CORRECT)
    expected = paragraph_rewards(paragraphs, "fake", media_embedding, encoder.embed_texts,
                                 keyphrase=make_keyphrase_extractor())
    assert [(p.start, p.end) for p in correct.paragraphs] == [(p.start, p.end) for p in paragraphs]
    assert [p.reward for p in correct.paragraphs] == pytest.approx(expected, abs=1e-5)
    assert len(expected) == 3 and all(0.0 <= r <= 1.0 for r in expected)
    assert correct.paragraph == pytest.approx(sum(expected) / 3, abs=1e-5)
    # What the trainer logs of a response: every component, the total, the mean paragraph reward, the judge flags.
    assert correct.scalars() == {**correct.components, "total": correct.total, "paragraph": correct.paragraph,
                                 "judge_asked": 1.0, "judge_failed": 0.0}
    assert set(correct.components) == {"format", "overlong", "accuracy", "hybrid", "thinking"}
    # WRONG is wrong w.r.t. the label, but PCR judges consistency: it leans real and answers real.
    assert wrong.paragraphs[-1].reward >= 0.5


def test_judge_timeout_scores_zero_counts_and_does_not_stall(judges, judge_dir, clip_dir, synthetic_dir):
    cfg = _reward_config(judge_dir, clip_dir, timeout_s=0.001)
    cfg.weights = {"accuracy": 1.0, "thinking": 1.0}
    scorer = RewardScorer(cfg, "word", judges=judges)
    video = _videos(synthetic_dir)[0]
    for _ in range(2):  # a late judge call does not block the next one
        correct, wrong = scorer.score([CORRECT, WRONG], [10, 10], ["fake", "fake"], media=[(video, "video")] * 2)
        assert correct == Score({"accuracy": 1.0, "thinking": 0.0}, total=1.0, judge_asked=True, judge_failed=True)
        assert wrong.judge_failed is False
    assert scorer.judge_failures == 2


def test_disabled_components_load_nothing():
    # Paths that do not exist: loading them would fail, so a working scorer proves nothing was loaded.
    cfg = RewardConfig(weights={"format": 1.0, "accuracy": 1.0, "thinking": 0.0},
                       judge={"model": {"path": "/nonexistent/judge"}}, paragraph={"encoder": "/nonexistent/clip"})
    scorer = RewardScorer(cfg, "letter")
    assert scorer.judges == [] and scorer.encoder is None
    scores = scorer.score(["<think>x</think><answer>\\boxed{B}</answer>"], [3], ["fake"])
    assert scores == [Score({"format": 0.0, "accuracy": 1.0, "thinking": 0.0}, total=1.0)]


class FlakyScorer(RewardScorer):
    """The reward actor's scorer, raising on its first `failures` calls."""

    def __init__(self, failures: int):
        super().__init__(RewardConfig(), "word")
        self.failures = failures

    def score(self, *args, **kwargs):
        if self.failures:
            self.failures -= 1
            raise ValueError("the scorer broke")
        return super().score(*args, **kwargs)


def test_a_reward_actor_that_raises_is_retried_then_fails_the_step(ray_local, capsys):
    """Issue 17 item 6: up to `train.actor_restarts` retries (2 here); one more failure is the actor's own error."""
    cfg = parse_config({"model": {"path": "tiny"}, "data": {"manifest": "m.parquet"}, "train": {"actor_restarts": 2}})
    prompt = Prompt(key="k", id="k", path="clip.mp4", label="fake", category="faces", input_ids=np.arange(3),
                    pixel_values=np.zeros((0, 0), np.float32), grid_thw=np.zeros(3, np.int64), is_video=True)
    group = [Sample([1, 2], [-0.5, -0.5], text, False, 0) for text in (CORRECT, WRONG)]
    actor = ray.remote(FlakyScorer).remote(4)

    def call():
        return scored(cfg, actor, prompt, group, actor.score.remote([s.text for s in group], [2, 2], ["fake", "fake"]))

    with pytest.raises(ray.exceptions.RayTaskError, match="the scorer broke"):
        call()  # fails 3 times: the call and its 2 retries
    assert [s.components["accuracy"] for s in call()] == [1.0, 0.0]  # the 4th failure, then a retry that scores
    assert capsys.readouterr().out.count("[train] reward actor raised scoring clip.mp4") == 3
    ray.kill(actor)
