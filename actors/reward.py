"""Reward actor: scores batches of responses with the pure functions in `rewards/`.

It owns what the enabled components need and nothing more: judge actors only when
the thinking weight is non-zero, a CLIP encoder and YAKE only when the paragraph
weight is. A judge that fails or times out scores 0 for its batch, is flagged in
the returned scores (`judge_failed`) and printed, and never stalls training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from functools import lru_cache

import ray
import torch

from actors.judge import start_judge_actors
from raytrain.config.sections import RewardConfig
from raytrain.data.media import MediaError, decode_media
from raytrain.models.clip import ClipEncoder
from raytrain.models.thinking_judge import JudgeRequest
from raytrain.observe.ray_metrics import RewardMetrics
from rewards.answer import parse_answer
from rewards.outcome import accuracy_reward, score_response
from rewards.paragraphs import make_keyphrase_extractor, paragraph_rewards, segment_paragraphs, vcr_phrases
from rewards.score import ParagraphScore, Score

MediaRef = tuple[str, str]  # (path, "video" | "image")


class RewardScorer:
    """The reward actor's body (`RewardActor` below); `judges` overrides the judge actors it would start
    (each restarted by Ray up to `judge_restarts` times); `tags` (`raytrain.observe.ray_metrics.run_tags`):
    export Ray metrics under them."""

    def __init__(self, reward: RewardConfig, answer_format: str, judges: list | None = None, tags: dict[str, str] | None = None,
                 judge_restarts: int = 0):
        self.metrics = RewardMetrics(tags) if tags else None
        self.cfg = reward
        self.answer_format = answer_format
        self.judges = [] if not reward.enabled("thinking") else judges or start_judge_actors(reward.judge, judge_restarts)
        self.judge_failures = 0
        self.encoder = self.keyphrase = None
        para = reward.paragraph
        if reward.enabled("paragraph"):
            self.keyphrase = make_keyphrase_extractor(para.yake_language, para.yake_max_ngram)
            if para.encoder:
                device = "cuda" if para.num_gpus > 0 and torch.cuda.is_available() else "cpu"
                self.encoder = ClipEncoder(para.encoder, kind=para.encoder_kind, pretrained=para.encoder_pretrained,
                                           dtype=para.encoder_dtype, device=device)

    def score(self, texts: list[str], num_tokens: list[int], labels: list[str], modes: Sequence[str] | None = None,
              media: Sequence[MediaRef | None] | None = None, questions: Sequence[str] | None = None) -> list[Score]:
        """One `Score` per response: each component the weights name and the total, and when enabled the
        judge's asked/failed flags and the kept paragraphs with their rewards.

        `modes` (default think), `media` (path and kind of the prompt's file; the G responses of a prompt
        share one decode and one embedding) and `questions` (the user prompt, for the judge) are per response.
        """
        t0 = time.perf_counter()
        n = len(texts)
        modes = list(modes or ["think"] * n)
        media = list(media or [None] * n)
        questions = list(questions or [""] * n)
        judged, failed = self._judge(texts, labels, modes, media, questions)
        results = [
            score_response(text, length, label, self.cfg.weights, max_len=self.cfg.max_len,
                           buffer=self.cfg.overlong_buffer, answer_format=self.answer_format,
                           mode=mode, judge_score=judged.get(i))
            for i, (text, length, label, mode) in enumerate(zip(texts, num_tokens, labels, modes))
        ]
        if self.judges:
            for i, sc in enumerate(results):
                sc.judge_asked, sc.judge_failed = i in judged or i in failed, i in failed
        if self.cfg.enabled("paragraph"):
            for sc, paragraphs in zip(results, self._paragraphs(texts, media)):
                sc.paragraphs = paragraphs
        if self.metrics:
            self.metrics.scored(n, time.perf_counter() - t0)
        return results

    def _judge(self, texts, labels, modes, media, questions) -> tuple[dict[int, float], set[int]]:
        """Judge scores of the correct think-mode responses, and the indices whose judge call failed."""
        if not self.judges:
            return {}, set()
        cfg = self.cfg.judge
        asked = [i for i in range(len(texts))
                 if modes[i] == "think" and accuracy_reward(texts[i], labels[i], self.answer_format) == 1.0]
        batches = [asked[k:k + cfg.batch_size] for k in range(0, len(asked), cfg.batch_size)]
        refs = [
            self.judges[b % len(self.judges)].grade.remote(
                [JudgeRequest(questions[i], texts[i], *(media[i] or (None, "video"))) for i in batch])
            for b, batch in enumerate(batches)
        ]
        scores, failed = {}, set()
        for batch, ref in zip(batches, refs):
            t0, ok = time.perf_counter(), False
            try:
                scores.update(zip(batch, ray.get(ref, timeout=cfg.timeout_s)))
                ok = True
            except Exception as e:  # timeout, dead judge, undecodable media: 0 for this batch, training goes on
                ray.cancel(ref)
                failed.update(batch)
                self.judge_failures += len(batch)
                print(f"[reward] judge failed on {len(batch)} response(s) ({type(e).__name__}: {e}); "
                      f"{self.judge_failures} judge failures so far", flush=True)
            if self.metrics:
                self.metrics.judged(len(batch), not ok, time.perf_counter() - t0)
        return scores, failed

    def _paragraphs(self, texts: list[str], media: list[MediaRef | None]) -> list[list[ParagraphScore]]:
        """Each response's kept paragraphs with their rewards: one media embedding per prompt, one keyphrase
        per distinct paragraph and one text-encoder call for all phrases."""
        para = self.cfg.paragraph
        paragraphs = [segment_paragraphs(t, min_chars=para.min_chars, max_paragraphs=para.max_paragraphs) for t in texts]
        answers = [parse_answer(t, self.answer_format) for t in texts]
        keyphrase = lru_cache(maxsize=None)(self.keyphrase)
        embeddings: dict[MediaRef, torch.Tensor] = {}
        phrases: set[str] = set()
        for ps, answer, ref in zip(paragraphs, answers, media):
            if self.encoder is not None and ref is not None and answer is not None and ps:
                if ref not in embeddings:
                    embeddings[ref] = self._media_embedding(ref)
                phrases.update(p for p in vcr_phrases(ps, answer, keyphrase) if p)
        text_table = self._embed_texts(sorted(phrases))
        scored = []
        for ps, answer, ref in zip(paragraphs, answers, media):
            rewards = paragraph_rewards(
                ps, answer, embeddings.get(ref), lambda batch: torch.stack([text_table[p] for p in batch]),
                keyphrase=keyphrase, alpha=para.alpha, beta=para.beta,
            )
            scored.append([ParagraphScore(p.start, p.end, r) for p, r in zip(ps, rewards)])
        return scored

    def _embed_texts(self, phrases: list[str]) -> dict[str, torch.Tensor]:
        """Phrase -> embedding; empty when the encoder fails, so VCR falls back to 0.5 (a missing key)."""
        if not phrases:
            return {}
        try:
            return dict(zip(phrases, self.encoder.embed_texts(phrases)))
        except Exception as e:  # a broken encoder costs the visual term, never the training step
            print(f"[reward] text encoder failed on {len(phrases)} phrase(s): {type(e).__name__}: {e}", flush=True)
            return {}

    def _media_embedding(self, ref: MediaRef) -> torch.Tensor:
        """The prompt's media embedding; NaN when the file cannot be decoded, which VCR scores 0.5 (its failure value)."""
        para = self.cfg.paragraph
        try:
            frames = decode_media(ref[0], ref[1], para.media)
            return self.encoder.embed_frames(frames)
        except (MediaError, OSError, ValueError) as e:
            print(f"[reward] no media embedding for {ref[0]}: {e}", flush=True)
            return torch.tensor([math.nan])


RewardActor = ray.remote(num_cpus=0.5)(RewardScorer)
