"""PRPO paragraph advantages, the estimator/loss registries and GSPO, against hand-computed values;
the paragraph-to-token mapping on a real (locally trained byte-level BPE) tokenizer."""

import math
from types import SimpleNamespace
from typing import get_args

import pytest
import torch

from raytrain.algos.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, group_advantages, paragraph_advantages
from raytrain.algos.losses import POLICY_LOSSES, policy_loss
from raytrain.algos.paragraph_tokens import paragraph_token_masks, token_char_spans
from raytrain.config.sections import AlgorithmConfig
from raytrain.models.tiny import build_tiny_processor
from rewards.paragraphs import segment_paragraphs
from rewards.score import ParagraphScore, Score


def _masks(*rows):
    """Per response, per paragraph, the token positions: [[[0, 1], [2]], [[0, 1, 2]]] -> [B, K, T]."""
    k = max(len(r) for r in rows)
    t = 1 + max(i for r in rows for p in r for i in p)
    out = torch.zeros(len(rows), k, t, dtype=torch.bool)
    for b, r in enumerate(rows):
        for j, positions in enumerate(r):
            out[b, j, positions] = True
    return out


def test_paragraph_advantages_pool_the_group_hand_computed():
    # Response 0: paragraphs r=1 (tokens 0,1) and r=0 (token 2), token 3 outside; response 1: r=0.5 on 0..2.
    # Pool [1, 0, 0.5]: mean 0.5, population std sqrt(1/6) = 0.408248 -> A = +-1.224745, 0.
    masks = _masks([[0, 1], [2]], [[0, 1, 2], []])
    masks = torch.cat([masks, torch.zeros(2, 2, 1, dtype=torch.bool)], dim=-1)  # a 4th token in no paragraph
    adv = paragraph_advantages(torch.tensor([[1.0, 0.0], [0.5, 9.0]]), masks, torch.tensor([0, 0]))
    a = 1.224745
    assert adv.tolist()[0] == pytest.approx([a, a, -a, 0.0], abs=1e-5)
    assert adv.tolist()[1] == pytest.approx([0.0, 0.0, 0.0, 0.0], abs=1e-5)  # 9.0 pads an absent paragraph


def test_paragraph_advantages_outcome_weight_mixes_rewards_before_pooling():
    # w = 0.5, R = [1, -1]: rewards become [1.0, 0.5] and [-0.25]; mean 0.416667, population std 0.513701.
    masks = _masks([[0], [1]], [[0, 1]])
    adv = paragraph_advantages(torch.tensor([[1.0, 0.0], [0.5, 0.0]]), masks, torch.tensor([0, 0]),
                               outcome_rewards=torch.tensor([1.0, -1.0]), outcome_weight=0.5)
    assert adv.tolist()[0] == pytest.approx([1.135549, 0.162221], abs=1e-5)
    assert adv.tolist()[1] == pytest.approx([-1.297771, -1.297771], abs=1e-5)


def test_paragraph_advantages_groups_are_independent_and_fallback_to_outcome():
    # Group 0: two responses with one paragraph each (r 1 and 0) -> +-1. Group 1: response 2 has a
    # paragraph alone in its pool (-> 0), response 3 has none -> its outcome advantage within the group:
    # R = [0, 1] -> (1 - 0.5) / 0.5 = 1 on every response token.
    masks = _masks([[0, 1]], [[0, 1]], [[0]], [[]])
    mask = torch.ones(4, 2)
    adv = paragraph_advantages(torch.tensor([[1.0], [0.0], [0.3], [0.0]]), masks, torch.tensor([0, 0, 1, 1]),
                               outcome_rewards=torch.tensor([0.0, 0.0, 0.0, 1.0]), response_mask=mask)
    assert adv.tolist() == [pytest.approx([1.0, 1.0]), pytest.approx([-1.0, -1.0]), [0.0, 0.0], pytest.approx([1.0, 1.0])]


def test_one_paragraph_per_response_and_outcome_weight_one_is_grpo():
    torch.manual_seed(0)
    g, groups, length = 4, 3, 5
    rewards = torch.randint(-2, 2, (g * groups,)).float() + torch.rand(g * groups)
    mask = (torch.arange(length) < torch.randint(1, length + 1, (g * groups, 1))).float()
    prpo = paragraph_advantages(torch.rand(g * groups, 1), mask.bool().unsqueeze(1), torch.arange(g * groups) // g,
                                outcome_rewards=rewards, outcome_weight=1.0, response_mask=mask)
    grpo = group_advantages(rewards, g, eps=1e-8, unbiased=False).unsqueeze(-1) * mask
    torch.testing.assert_close(prpo, grpo)
    # The registered estimator is the same computation.
    x = AdvantageInputs(rewards, g, mask, torch.rand(g * groups, 1), mask.bool().unsqueeze(1))
    torch.testing.assert_close(ADVANTAGE_ESTIMATORS["prpo"](x, SimpleNamespace(prpo_outcome_weight=1.0, prpo_group_by="prompt")), grpo)


def test_paragraph_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="overlap"):
        paragraph_advantages(torch.zeros(1, 2), torch.ones(1, 2, 3, dtype=torch.bool), torch.tensor([0]))
    with pytest.raises(ValueError, match="outcome_rewards"):
        paragraph_advantages(torch.zeros(1, 1), torch.zeros(1, 1, 3, dtype=torch.bool), torch.tensor([0]))
    with pytest.raises(ValueError, match="outcome_weight"):
        paragraph_advantages(torch.zeros(1, 1), torch.ones(1, 1, 3, dtype=torch.bool), torch.tensor([0]), outcome_weight=2)


def test_registries_match_the_config_choices():
    fields = AlgorithmConfig.model_fields
    # DAPO's configurable estimators, and the one `algorithm.name: prpo` uses.
    assert set(get_args(fields["advantage_estimator"].annotation)) | {"prpo"} == set(ADVANTAGE_ESTIMATORS)
    assert set(get_args(fields["policy_loss"].annotation)) == set(POLICY_LOSSES)


def test_grpo_estimators_broadcast_the_response_advantage_to_its_tokens():
    rewards, mask = torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    x = AdvantageInputs(rewards, 4, mask)
    grpo = ADVANTAGE_ESTIMATORS["grpo"](x, AlgorithmConfig())
    assert grpo[:, 0].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.0], abs=1e-5)
    assert grpo[1, 1] == 0 and grpo[3].tolist() == [0.0, 0.0]
    dr = ADVANTAGE_ESTIMATORS["dr_grpo"](x, AlgorithmConfig())
    assert dr[:, 0].tolist() == [0.5, -0.5, -0.5, 0.0]


def test_gspo_uses_the_sequence_ratio_hand_computed():
    algo = AlgorithmConfig(policy_loss="gspo", loss_agg="seq-mean-token-mean")
    # Token ratios 1.1 and 1.3: s = sqrt(1.43) = 1.195826 < 1.28, unclipped; loss = -s (A = 1), and each
    # token's gradient is -s / 2 (the token mean of s * grad logp).
    logp = torch.tensor([[math.log(1.1), math.log(1.3)]], dtype=torch.float64, requires_grad=True)
    loss, stats = POLICY_LOSSES["gspo"](logp, torch.zeros_like(logp), torch.tensor([1.0], dtype=torch.float64),
                                        torch.ones(1, 2), algo)
    loss.backward()
    assert loss.item() == pytest.approx(-1.195826, abs=1e-6)
    assert logp.grad.tolist()[0] == pytest.approx([-0.597913, -0.597913], abs=1e-6)
    assert stats["clip_frac"] == 0.0
    # s = 1.5 > 1 + 0.28: clipped, loss -1.28 and no gradient.
    logp = torch.tensor([[math.log(1.5), math.log(1.5)]], dtype=torch.float64, requires_grad=True)
    loss, stats = POLICY_LOSSES["gspo"](logp, torch.zeros_like(logp), torch.tensor([1.0], dtype=torch.float64),
                                        torch.ones(1, 2), algo)
    loss.backward()
    assert loss.item() == pytest.approx(-1.28) and logp.grad.abs().sum() == 0 and stats["clip_frac"] == 1.0


def test_ppo_clip_entry_is_policy_loss_with_the_run_settings():
    algo = AlgorithmConfig(clip_low=0.1, clip_high=0.1, loss_agg="seq-mean-token-sum")
    logp, old = torch.tensor([[0.3, -0.2], [0.1, 0.0]]), torch.zeros(2, 2)
    adv, mask = torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    got, _ = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, algo, num_tokens=99.0)
    want, _ = policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.1, loss_agg="seq-mean-token-sum")
    assert got.item() == pytest.approx(want.item())


# --- paragraph -> token mapping on a real tokenizer ---

TEXT = ("The face boundary shows a blending seam — naïve métissage at the jaw, 日本語 text 😀 overlays.\n\n"
        "Lips move out of sync with the voice; the ÉCLAT of the teeth flickers.\n\n"
        "ok\n\n"
        "<answer>fake</answer>")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_processor().tokenizer


def _byte_ids(tokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte: a valid but non-canonical tokenization that splits every multi-byte character."""
    # GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest are shifted past 255.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    char = {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(shifted)}}
    vocab = tokenizer.get_vocab()
    return [vocab[char[b]] for b in text.encode()]


@pytest.mark.parametrize("tokenization", ["canonical", "bytes"])
def test_token_spans_cover_the_text_and_split_multibyte_characters(tokenizer, tokenization):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"] if tokenization == "canonical" else None
    if ids is None:
        ids = _byte_ids(tokenizer, TEXT)
    ids = ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")]  # a special token: skipped in the text
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    spans = token_char_spans(tokenizer, ids)
    assert len(spans) == len(ids) and spans[-1] == (len(TEXT), len(TEXT))
    # Spans tile the text in order; the tokens of one multi-byte character share its span.
    ends = sorted({e for _, e in spans})
    assert ends[-1] == len(TEXT)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert (s1, e1) == (s0, e0) or s1 == e0
    if tokenization == "bytes":
        kanji = TEXT.index("日")
        assert spans.count((kanji, kanji + 1)) == 3  # three bytes, three tokens, one character
        emoji = TEXT.index("😀")
        assert spans.count((emoji, emoji + 1)) == 4
    else:
        offsets = tokenizer(TEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        assert [tuple(o) for o in offsets] == spans[:-1]  # the fast tokenizer's own offsets


@pytest.mark.parametrize("tokenization", ["canonical", "bytes"])
def test_paragraph_masks_select_exactly_each_paragraphs_tokens(tokenizer, tokenization):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"] if tokenization == "canonical" else _byte_ids(tokenizer, TEXT)
    paragraphs = segment_paragraphs(TEXT)
    assert [p.text[:4] for p in paragraphs] == ["The ", "Lips", "<ans"]  # "ok" is too short
    masks = paragraph_token_masks([(p.start, p.end) for p in paragraphs], token_char_spans(tokenizer, ids))
    assert masks.shape == (3, len(ids)) and masks.sum(0).max() == 1
    for p, row in zip(paragraphs, masks):
        chosen = [i for i, keep in zip(ids, row.tolist()) if keep]
        assert tokenizer.decode(chosen).strip() == p.text
    # "ok" and the blank lines belong to no paragraph.
    ok = TEXT.index("ok")
    spans = token_char_spans(tokenizer, ids)
    assert not any(masks[:, t].any() for t, (s, e) in enumerate(spans) if s >= ok and e <= ok + 2)


def test_trainer_paragraph_tensors_place_masks_at_the_response_positions(tokenizer):
    """What the worker hands the `prpo` estimator: reward actor spans -> token masks at the batch's
    response positions (after the prompt), rewards padded to the largest paragraph count."""
    from raytrain.data.batch import Sample
    from raytrain.train.experience import paragraph_tensors

    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    paragraphs = segment_paragraphs(TEXT)
    samples = [Sample(ids, [0.0] * len(ids), TEXT, False, 0), Sample(ids[:2], [0.0, 0.0], tokenizer.decode(ids[:2]), False, 0)]
    scores = [Score({}, 0.0, paragraphs=[ParagraphScore(p.start, p.end, r) for p, r in zip(paragraphs, (0.2, 0.4, 0.6))]),
              Score({}, 0.0, paragraphs=[])]
    prompt_len = 5
    response_mask = torch.zeros(2, prompt_len + len(ids), dtype=torch.long)
    response_mask[0, prompt_len:] = 1
    response_mask[1, prompt_len:prompt_len + 2] = 1
    rewards, masks = paragraph_tensors(samples, scores, response_mask, tokenizer)
    assert rewards.tolist() == [pytest.approx([0.2, 0.4, 0.6]), [0.0, 0.0, 0.0]]
    assert not masks[:, :, :prompt_len].any() and not masks[1].any()
    expected = paragraph_token_masks([(p.start, p.end) for p in paragraphs], token_char_spans(tokenizer, ids))
    assert torch.equal(masks[0, :, prompt_len:], expected)
