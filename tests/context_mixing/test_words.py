"""Word mapping, pooling, normalisation, rollout and outside mass against hand-made cases and literal loops."""

from __future__ import annotations

import numpy as np
import pytest

from src.context_mixing import (
    ContextMixingError,
    outside_mass,
    pool_blocks,
    pool_receivers,
    rollout,
    row_normalize,
    word_frames,
)
from src.datamodules.alignment import frame_labels, frame_times
from src.datamodules.corpus import Interval
from tests.reference import context_mixing as ref

RATE = 50.0


def test_interval_mapping_on_hand_made_words():
    # frame k at 0.0125 + 0.02 k (wav2vec2's offset): touching words, then a word shorter than a frame
    words = [("a", 0.00, 0.05), ("b", 0.05, 0.11), ("c", 0.114, 0.118), ("d", 0.15, 0.20)]
    got = word_frames(words, 10, RATE, 0.0125)
    # times: .0125 .0325 .0525 .0725 .0925 .1125 .1325 .1525 .1725 .1925
    assert [g.tolist() for g in got] == [[0, 1], [2, 3, 4], [5], [7, 8, 9]]
    # "c" contains no frame time: the frame nearest to its midpoint .116 (frame 5 at .1125); frame 6 (.1325) is
    # in no word (a pause). Touching words never share a frame in this mapping.
    assert not set(got[0]) & set(got[1])


def test_ceil_inclusive_mapping_reproduces_the_tutorial():
    words = [("on", 0.10, 0.30), ("y", 0.30, 0.41), ("trouve", 0.41, 0.80)]
    got = word_frames(words, 1500, RATE, 0.0, mapping="ceil_inclusive", audio_duration=1.0)
    # s = ceil(50 t_s), e = ceil(50 t_e), frames s..e inclusive: touching words share the boundary frame
    assert [(g[0], g[-1]) for g in got] == [(5, 15), (15, 21), (21, 40)]
    assert all(np.array_equal(g, np.arange(g[0], g[-1] + 1)) for g in got)
    # clipped to the sequence
    last = word_frames([("x", 0.5, 0.6)], 30, RATE, 0.0, mapping="ceil_inclusive", audio_duration=0.6)
    assert last[0].tolist() == list(range(25, 30))


def test_word_errors_name_the_utterance_and_word():
    with pytest.raises(ContextMixingError, match=r"utterance 'u1', word 1 'b' \[0.500, 1.300\] s: beyond the audio"):
        word_frames([("a", 0.0, 0.5), ("b", 0.5, 1.3)], 50, RATE, 0.0, utt_id="u1", audio_duration=1.0)
    with pytest.raises(ContextMixingError, match="word 0 'a'.*start must be < end"):
        word_frames([("a", 0.4, 0.4)], 50, RATE, 0.0, utt_id="u2")
    with pytest.raises(ContextMixingError, match="utterance 'u3': no words"):
        word_frames([], 50, RATE, 0.0, utt_id="u3")
    with pytest.raises(ContextMixingError, match="beyond the 10 frames the encoder sees"):
        word_frames([("a", 0.1, 0.3)], 10, RATE, 0.0, audio_duration=1.0)
    with pytest.raises(ContextMixingError, match="analysis.frame_mapping='floor'"):
        word_frames([("a", 0.1, 0.3)], 10, RATE, 0.0, mapping="floor")
    # ending less than half a frame after the audio is tolerated (alignment end times round up)
    word_frames([("a", 0.1, 1.005)], 50, RATE, 0.0, audio_duration=1.0)


def test_interval_mapping_agrees_with_the_alignment_convention():
    """The frames of each word are the frames alignment.frame_labels (used by frame_items) gives that word."""
    rng = np.random.default_rng(0)
    for offset in (0.0, 0.0125):
        edges = np.sort(rng.uniform(0.05, 1.9, size=13))
        ivs = [Interval(float(a), float(b), f"w{k}") for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])) if k % 3 != 2]
        T = 99
        idx, ok = frame_labels(ivs, frame_times(T, RATE, offset))
        got = word_frames([(iv.label, iv.start, iv.end) for iv in ivs], T, RATE, offset, audio_duration=2.0)
        for k, g in enumerate(got):
            want = np.flatnonzero(ok & (idx == k))
            if want.size:
                assert np.array_equal(g, want)
            else:  # shorter than a frame: the frame nearest to the midpoint
                mid = (ivs[k].start + ivs[k].end) / 2
                assert g.tolist() == [int(np.argmin(np.abs(frame_times(T, RATE, offset) - mid)))]


def test_pooling_normalisation_rollout_and_outside_mass_vs_loops():
    rng = np.random.default_rng(1)
    T = 17
    S = rng.random((3, T, T))
    words = [np.arange(1, 4), np.arange(3, 8), np.array([9]), np.arange(11, 15)]  # overlap at 3, gaps
    got = pool_blocks(S, words, words)
    for i in range(3):
        np.testing.assert_allclose(got[i], ref.word_blocks(S[i], words, words), atol=1e-14)
    V = rng.random((2, T, len(words)))
    V[:, 0] = np.nan  # rows outside every word may be NaN (not computed)
    pr = pool_receivers(V, words)
    for i in range(2):
        for a, I in enumerate(words):
            np.testing.assert_allclose(pr[i, a], V[i, I].mean(0), atol=1e-14)
    M = np.array([[1.0, 3.0], [0.0, 0.0]])
    np.testing.assert_array_equal(row_normalize(M), [[0.25, 0.75], [0.0, 0.0]])
    np.testing.assert_array_equal(row_normalize(M), ref.normalize_rows(M))
    A = row_normalize(rng.random((4, T, T)))
    assert np.array_equal(rollout(A), ref.compute_joint_attention(A))  # bit-exact
    np.testing.assert_allclose(rollout(A).sum(-1), 1.0, atol=1e-12)
    om = outside_mass(S, words)
    inside = sorted({int(t) for w in words for t in w})
    outside = [t for t in range(T) if t not in inside]
    for i in range(3):
        want = np.mean([S[i, t, outside].sum() / S[i, t].sum() for t in inside])
        assert om[i] == pytest.approx(want, abs=1e-14)
