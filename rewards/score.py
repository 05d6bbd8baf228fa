"""One response's reward, as the reward actor hands it to the trainer (SPEC sections 3 and 5)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple


class ParagraphScore(NamedTuple):
    """A kept paragraph of a response: its span ``text[start:end]`` and its PRPO reward r_k."""

    start: int
    end: int
    reward: float


@dataclass
class Score:
    """The scalar components named in `reward.weights`, their weighted sum R, and what the enabled
    extras add: PRPO's paragraphs (None unless paragraph rewards are on) and the thinking judge's
    flags (None unless the thinking reward is on)."""

    components: dict[str, float]  # format, overlong, accuracy, hybrid, thinking: those the weights name
    total: float  # R: the weighted sum of the components (paragraph rewards are a vector, not summed)
    paragraphs: list[ParagraphScore] | None = None
    judge_asked: bool | None = None  # a correct think-mode response, sent to the judge
    judge_failed: bool | None = None  # its judge call failed or timed out, so thinking scored 0

    @property
    def paragraph(self) -> float | None:
        """The mean paragraph reward (0 for a response without paragraphs); None when they are off."""
        if self.paragraphs is None:
            return None
        rewards = [p.reward for p in self.paragraphs]
        return sum(rewards) / len(rewards) if rewards else 0.0

    def scalars(self) -> dict[str, float]:
        """Every number of this score by name: the components, `total`, and when on the mean paragraph
        reward and the judge flags (0/1). The trainer logs each as `reward/<name>`, its mean over a step's
        responses, and filters groups on one (`algorithm.filter_metric`)."""
        values = {**self.components, "total": self.total}
        if self.paragraphs is not None:
            values["paragraph"] = self.paragraph
        if self.judge_asked is not None:
            values["judge_asked"], values["judge_failed"] = float(self.judge_asked), float(self.judge_failed)
        return values

    def finite(self) -> bool:
        """Whether every number of this score (components, total, paragraph rewards) is finite: a component
        that returns NaN or infinity would make its group's advantages, and the loss, NaN."""
        return (all(math.isfinite(v) for v in self.scalars().values())
                and all(math.isfinite(p.reward) for p in self.paragraphs or ()))
