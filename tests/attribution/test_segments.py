"""Segments from hand-made alignments, masks (rounding rule) and segment scores vs a literal reference."""

from __future__ import annotations

import numpy as np
import pytest

from src.attribution import SegmentError, make_segments, segment_scores
from src.datamodules.corpus import Interval, Utterance
from tests.attribution.reference_segments import reduce_scores, segment_of_time


def utt(words, dur=1.0, uid="u"):
    return Utterance(uid, np.zeros(int(dur * 16000), np.float32), 16000, tiers={"words": words})


def test_touching_words_gaps_and_edge_silences():
    s = make_segments(utt([Interval(0.1, 0.3, "go"), Interval(0.3, 0.5, "to"), Interval(0.6, 0.9, "go")]))
    assert s.ids == ["[SIL]_0", "go_0", "to", "[SIL]_1", "go_1", "[SIL]_2"]
    assert s.labels == ["[SIL]", "go", "to", "[SIL]", "go", "[SIL]"]
    np.testing.assert_allclose(s.start, [0.0, 0.1, 0.3, 0.5, 0.6, 0.9])
    np.testing.assert_allclose(s.end, [0.1, 0.3, 0.5, 0.6, 0.9, 1.0])
    assert s.is_word.tolist() == [False, True, True, False, True, False]
    assert s.word_index.tolist() == [-1, 0, 1, -1, 2, -1]
    assert np.all(s.end[:-1] == s.start[1:])  # no gap, no overlap


def test_empty_label_intervals_are_silences_and_word_index_skips_them():
    s = make_segments(utt([Interval(0.0, 0.2, ""), Interval(0.2, 0.5, "a"), Interval(0.5, 0.6, " "),
                           Interval(0.6, 1.0, "b")]))  # fmt: skip
    assert s.ids == ["[SIL]_0", "a", "[SIL]_1", "b"]
    assert s.word_index.tolist() == [-1, 0, -1, 1]


def test_bad_alignments_name_the_utterance():
    with pytest.raises(SegmentError, match="'bad'.*beyond the audio"):
        make_segments(utt([Interval(0.1, 1.2, "late")], uid="bad"))
    with pytest.raises(SegmentError, match="'e1'.*empty"):
        make_segments(utt([], uid="e1"))
    with pytest.raises(SegmentError, match="'e2'.*no non-empty"):
        make_segments(utt([Interval(0.0, 0.5, "")], uid="e2"))
    with pytest.raises(SegmentError, match="'o'.*overlaps"):
        make_segments(utt([Interval(0.1, 0.5, "a"), Interval(0.4, 0.6, "b")], uid="o"))
    with pytest.raises(SegmentError, match="no words tier"):
        make_segments(Utterance("n", np.zeros(100, np.float32), 16000))
    # within the 10 ms tolerance: clipped to the audio
    s = make_segments(utt([Interval(0.5, 1.005, "end")]))
    assert s.end[-1] == 1.0 and s.ids == ["[SIL]_0", "end"]


def test_windows_and_frames():
    s = make_segments(utt([], dur=0.25), kind="windows", window=0.1)
    np.testing.assert_allclose(s.start, [0.0, 0.1, 0.2])
    np.testing.assert_allclose(s.end, [0.1, 0.2, 0.25])
    assert make_segments(utt([], dur=0.1), kind="frames").ids == [f"frame{i}" for i in range(5)]
    with pytest.raises(SegmentError, match="window"):
        make_segments(utt([]), kind="windows")


@pytest.mark.parametrize("padded", [False, True])
def test_index_of_times_matches_literal_rule(padded):
    s = make_segments(utt([Interval(0.1, 0.3, "go"), Interval(0.3, 0.5, "to"), Interval(0.6, 0.9, "x")]))
    times = np.concatenate([np.arange(0, 1.2, 0.01), [0.1, 0.3, 0.5, 0.6, 0.9, 1.0]])
    got = s.index_of_times(times, padded=padded)
    want = [segment_of_time(t, s.start, s.end, s.duration, padded) for t in times]
    assert got.tolist() == want


def test_feature_mask_on_waveform_and_frames(w2v_bb):
    from src.attribution import classifier_target
    from tests.attribution.conftest import make_classifier, make_utt

    u = make_utt(8000, words=[Interval(0.1, 0.2, "a"), Interval(0.2, 0.3, "b")])
    s = make_segments(u)
    clf = make_classifier(w2v_bb)
    tw = classifier_target(w2v_bb, clf, u, "action", "waveform", class_index=0)
    m = tw.feature_mask(s)[0].numpy()
    assert m[:1600].tolist() == [0] * 1600 and m[1600:3200].tolist() == [1] * 1600 and m[3200:4800].tolist() == [2] * 1600
    assert (m[4800:] == 3).all()
    tc = classifier_target(w2v_bb, clf, u, "action", "cnn", class_index=0)
    mc = tc.feature_mask(s)[0].numpy()  # (T, D): frame i centred at 0.0125 + 0.02 i
    t = 0.0125 + 0.02 * np.arange(mc.shape[0])
    assert mc[:, 0].tolist() == [segment_of_time(x, s.start, s.end, s.duration, False) for x in t]
    assert (mc == mc[:, :1]).all()  # every feature of a frame in its segment


@pytest.mark.parametrize("reduction", ["mean", "sum", "l2"])
def test_segment_scores_vs_reference(reduction):
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((1, 50, 3))
    mask = np.repeat(rng.integers(0, 5, size=(1, 50, 1)), 3, axis=2)  # segment 4 = padding (n_segments = 4)
    mask[0, 0] = 0
    got = segment_scores(raw, mask, 4, reduction)
    want = reduce_scores(raw.ravel(), mask.ravel(), 4, reduction)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_segment_scores_hand_case():
    raw = np.array([[1.0, 2.0, 3.0, -4.0, 10.0]])
    mask = np.array([[0, 0, 1, 1, 2]])
    np.testing.assert_allclose(segment_scores(raw, mask, 2, "mean"), [1.5, -0.5])
    np.testing.assert_allclose(segment_scores(raw, mask, 2, "sum"), [3.0, -1.0])
    np.testing.assert_allclose(segment_scores(raw, mask, 2, "l2"), [5 ** 0.5, 5.0])
    assert np.isnan(segment_scores(raw, mask, 4, "mean")[3])  # a segment without elements
    with pytest.raises(SegmentError, match="reduction"):
        segment_scores(raw, mask, 2, "max")
