"""Which response tokens belong to which paragraph (PRPO, SPEC section 5).

The reward actor segments a response's text into paragraphs with character spans; the
trainer needs the same paragraphs as token masks. Re-tokenising the text is not enough:
a sampled response need not be the tokenizer's canonical tokenization of its own text.
So the sampled tokens themselves are decoded, each with a few tokens of context, to give
every token its character span in the decoded text (what `Sample.text` holds). A token
holding only some bytes of a multi-byte character shares that character's span; special
tokens (skipped in the text) have empty spans.
"""

from __future__ import annotations

import torch

_MAX_CHAR_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens
_CONTEXT = 4  # tokens decoded before each piece, so tokenizers that drop a leading space at the start agree


def token_char_spans(tokenizer, token_ids: list[int]) -> list[tuple[int, int]]:
    """[start, end) of every token in `tokenizer.decode(token_ids, skip_special_tokens=True)`."""

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    spans: list[tuple[int, int]] = []
    pos = 0  # characters attributed so far
    anchor = 0  # first token not yet attributed
    for i in range(len(token_ids)):
        context = max(0, anchor - _CONTEXT)
        before = decode(token_ids[context:anchor])
        after = decode(token_ids[context:i + 1])
        incomplete = after.endswith("\ufffd") and not before.endswith("\ufffd")
        if incomplete and i + 1 < len(token_ids) and i + 1 - anchor < _MAX_CHAR_TOKENS:
            continue  # the character is not finished: its bytes continue in the next token
        piece = len(after) - len(before)
        spans += [(pos, pos + piece)] * (i + 1 - anchor)
        pos, anchor = pos + piece, i + 1
    # Invalid byte sequences (a sampled lone continuation byte) decode lossily; keep spans in range.
    length = len(decode(token_ids))
    return [(min(s, length), min(e, length)) for s, e in spans]


def paragraph_token_masks(paragraph_spans: list[tuple[int, int]], token_spans: list[tuple[int, int]]) -> torch.Tensor:
    """``[K, T]`` bool: token t lies in paragraph k (the paragraph its characters overlap most).

    Tokens between paragraphs (blank lines, dropped short paragraphs) and empty tokens
    belong to none.
    """
    masks = torch.zeros(len(paragraph_spans), len(token_spans), dtype=torch.bool)
    for t, (ts, te) in enumerate(token_spans):
        overlaps = [max(0, min(te, pe) - max(ts, ps)) for ps, pe in paragraph_spans]
        if overlaps and max(overlaps) > 0:
            masks[overlaps.index(max(overlaps)), t] = True
    return masks
