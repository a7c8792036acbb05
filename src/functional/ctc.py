"""CTC read-outs: greedy decoding and the aligned-token probability (pure torch / numpy).

- **Greedy decoding** (best path): the most probable token per frame, repeats collapsed,
  then blanks dropped (``a a - a b b`` -> ``a a b``: a blank separates two equal tokens).
- **Aligned-token probability** (de Heer Kloots & Zuidema 2024, ``CTCLens.to_token_probs``):
  for an interval ``[lo, hi)`` of frames aligned to token ``v``, ``max_{lo <= t < hi} p_t(v)``.
  It is computed for every layer at once from ``(L, T, V)`` log-probabilities.
- **Tokens to text** for character vocabularies: the word delimiter (``|`` in wav2vec2
  vocabularies) becomes a space, special tokens are dropped, whitespace collapsed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def collapse(ids: Sequence[int], blank: int) -> list[int]:
    """CTC collapse of a frame-level path: merge runs of equal ids, then drop ``blank``.

    >>> collapse([0, 3, 3, 0, 3, 5, 5, 0], blank=0)
    [3, 3, 5]
    """
    out, prev = [], None
    for i in (int(x) for x in ids):
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def greedy_decode(log_probs: Tensor, lengths: Tensor | Sequence[int] | None, blank: int) -> list[list[int]]:
    """Best-path decoding of a batch.  log_probs: ``(B, T, V)`` (or ``(T, V)``); lengths: valid frames ``(B,)``.

    Returns one list of token ids per item (frames past an item's length are ignored).
    Ties in the argmax go to the lowest id (torch's ``argmax``).
    """
    lp = log_probs if log_probs.ndim == 3 else log_probs[None]  # (B, T, V)
    best = lp.argmax(-1).cpu().numpy()  # (B, T)
    n = [lp.shape[1]] * lp.shape[0] if lengths is None else [int(x) for x in lengths]
    if len(n) != lp.shape[0]:
        raise ValueError(f"{lp.shape[0]} items but {len(n)} lengths")
    return [collapse(best[b, : n[b]], blank) for b in range(lp.shape[0])]


def tokens_to_text(tokens: Sequence[str], word_delimiter: str | None = "|", drop: Sequence[str] = ()) -> str:
    """Character tokens joined into text: ``word_delimiter`` -> space, tokens in ``drop`` left out,
    whitespace collapsed.

    >>> tokens_to_text(["H", "I", "|", "Y", "O", "U", "|"], "|", drop=["<s>"])
    'HI YOU'
    """
    skip = set(drop)
    s = "".join(" " if (word_delimiter is not None and t == word_delimiter) else t for t in tokens if t not in skip)
    return " ".join(s.split())


def interval_mask(lo: np.ndarray, hi: np.ndarray, num_frames: int) -> np.ndarray:
    """``(n, T)`` boolean mask: frame ``t`` belongs to interval ``i`` when ``lo[i] <= t < hi[i]``."""
    t = np.arange(num_frames)[None, :]  # (1, T)
    return (t >= np.asarray(lo)[:, None]) & (t < np.asarray(hi)[:, None])  # (n, T)


def aligned_token_probs(log_probs: Tensor, lo: np.ndarray, hi: np.ndarray, tokens: np.ndarray) -> Tensor:
    """Probability of each interval's token, max over the interval's frames, for every layer.

    log_probs: ``(L, T, V)`` (or ``(T, V)``) log-probabilities over the vocabulary;
    lo, hi: ``(n,)`` frame ranges ``[lo, hi)`` (``hi > lo``, within ``[0, T]``); tokens: ``(n,)`` vocabulary ids.
    Returns ``(L, n)`` probabilities (``(n,)`` for 2-D input).
    """
    squeeze = log_probs.ndim == 2
    lp = log_probs[None] if squeeze else log_probs  # (L, T, V)
    lo, hi, tokens = np.asarray(lo, np.int64), np.asarray(hi, np.int64), np.asarray(tokens, np.int64)
    if not (len(lo) == len(hi) == len(tokens)):
        raise ValueError(f"lo, hi and tokens differ in length: {len(lo)}, {len(hi)}, {len(tokens)}")
    T, V = lp.shape[1], lp.shape[2]
    if len(lo) and ((hi <= lo).any() or lo.min() < 0 or hi.max() > T):
        raise ValueError(f"intervals must satisfy 0 <= lo < hi <= T={T}")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= V):
        raise ValueError(f"token ids must lie in [0, {V})")
    picked = lp[:, :, torch.as_tensor(tokens)]  # (L, T, n): log p_t(token_i)
    mask = torch.as_tensor(interval_mask(lo, hi, T).T)  # (T, n)
    best = picked.masked_fill(~mask[None], float("-inf")).amax(dim=1)  # (L, n)
    out = best.exp()
    return out[0] if squeeze else out


def frame_token_probs(log_probs: Tensor, frame_tokens: np.ndarray) -> Tensor:
    """Per layer and frame, the probability of the token aligned to that frame (NaN where ``frame_tokens < 0``).

    log_probs: ``(L, T, V)``; frame_tokens: ``(T,)`` vocabulary ids, ``-1`` for unaligned frames. Returns ``(L, T)``.
    """
    ft = torch.as_tensor(np.asarray(frame_tokens, np.int64))  # (T,)
    idx = ft.clamp(min=0)[None, :, None].expand(log_probs.shape[0], -1, 1)  # (L, T, 1)
    p = log_probs.gather(-1, idx)[..., 0].exp()  # (L, T)
    return p.masked_fill((ft < 0)[None], float("nan"))
