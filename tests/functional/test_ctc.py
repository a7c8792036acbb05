"""src/functional/ctc.py against hand-made posteriors and literal loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.functional.ctc import (
    aligned_token_probs,
    collapse,
    frame_token_probs,
    greedy_decode,
    interval_mask,
    tokens_to_text,
)


def _posteriors(path: list[int], V: int, p: float = 0.7) -> torch.Tensor:
    """(T, V) log-probabilities whose argmax at frame t is path[t] (prob p, the rest uniform)."""
    T = len(path)
    probs = torch.full((T, V), (1 - p) / (V - 1), dtype=torch.float64)
    probs[torch.arange(T), torch.tensor(path)] = p
    return probs.log()


def test_collapse_literal_cases():
    assert collapse([], 0) == []
    assert collapse([0, 0, 0], 0) == []
    assert collapse([1, 1, 1], 0) == [1]
    assert collapse([1, 0, 1], 0) == [1, 1]  # a blank separates equal tokens
    assert collapse([1, 1, 2, 2, 0, 2, 3], 0) == [1, 2, 2, 3]
    assert collapse([4, 4, 2, 4], 4) == [2]  # blank need not be id 0


def test_greedy_decode_hand_made_posteriors_and_lengths():
    # blank = 0; "c a a t" with a blank between the two a's, trailing padding frames decode to 5
    a = _posteriors([0, 3, 3, 1, 1, 0, 1, 2, 0, 5, 5], V=6)
    b = _posteriors([2, 2, 2, 0, 4, 0, 0, 0, 0, 0, 0], V=6)
    lp = torch.stack([a, b])  # (2, T, V)
    assert greedy_decode(lp, [9, 11], blank=0) == [[3, 1, 1, 2], [2, 4]]
    assert greedy_decode(lp, None, blank=0)[0] == [3, 1, 1, 2, 5]
    assert greedy_decode(a, None, blank=0) == [[3, 1, 1, 2, 5]]
    with pytest.raises(ValueError, match="lengths"):
        greedy_decode(lp, [3], blank=0)


def test_greedy_decode_matches_transformers_tokenizer(tmp_path):
    import json

    from transformers import Wav2Vec2CTCTokenizer

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6, "C": 7}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
    path = [0, 5, 5, 0, 5, 4, 4, 6, 0, 7, 7, 4, 0, 6]
    ids = greedy_decode(_posteriors(path, 8), None, blank=0)[0]
    inv = {v: k for k, v in vocab.items()}
    ours = tokens_to_text([inv[i] for i in ids], "|", drop=["<s>", "</s>", "<pad>"])
    assert ours == "AA BC B"
    assert ours == tok.decode(torch.tensor(path).tolist())


def test_tokens_to_text():
    assert tokens_to_text(["|", "A", "|", "|", "B", "|"], "|") == "A B"
    assert tokens_to_text(["a", "b"], None) == "ab"
    assert tokens_to_text(["<s>", "a", "</s>"], "|", drop=["<s>", "</s>"]) == "a"


def _loop_aligned(lp: torch.Tensor, lo, hi, tokens) -> np.ndarray:
    """Literal reference: for each layer and interval, loop over the frames."""
    L = lp.shape[0]
    out = np.zeros((L, len(lo)))
    for layer in range(L):
        for i, (a, b, v) in enumerate(zip(lo, hi, tokens)):
            best = -math.inf
            for t in range(a, b):
                best = max(best, math.exp(float(lp[layer, t, v])))
            out[layer, i] = best
    return out


def test_aligned_token_probs_against_a_loop():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 20, 7, generator=g, dtype=torch.float64).log_softmax(-1)  # (L, T, V)
    lo = np.array([0, 3, 3, 10, 19])
    hi = np.array([3, 4, 9, 19, 20])
    tok = np.array([1, 6, 0, 2, 2])
    got = aligned_token_probs(lp, lo, hi, tok)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got.numpy(), _loop_aligned(lp, lo, hi, tok), rtol=0, atol=1e-12)
    np.testing.assert_allclose(aligned_token_probs(lp[1], lo, hi, tok).numpy(), got[1].numpy(), atol=0)


def test_aligned_token_probs_known_value_and_errors():
    # token 1's probability over frames 1..2 is max(0.2, 0.6) = 0.6
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.05, 0.95]], dtype=torch.float64)
    assert aligned_token_probs(probs.log(), [1], [3], [1]).item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="lo < hi"):
        aligned_token_probs(probs.log(), [2], [2], [1])
    with pytest.raises(ValueError, match="token ids"):
        aligned_token_probs(probs.log(), [0], [1], [2])
    assert aligned_token_probs(probs.log()[None], [], [], []).shape == (1, 0)


def test_interval_mask_and_frame_token_probs():
    m = interval_mask(np.array([0, 2]), np.array([1, 4]), 5)
    assert m.tolist() == [[True, False, False, False, False], [False, False, True, True, False]]
    probs = torch.tensor([[[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]]], dtype=torch.float64)  # (1, 3, 2)
    got = frame_token_probs(probs.log(), np.array([1, -1, 0]))
    assert got[0, 0].item() == pytest.approx(0.1) and math.isnan(got[0, 1].item()) and got[0, 2].item() == pytest.approx(0.5)
