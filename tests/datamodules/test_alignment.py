"""Alignment conventions on hand-made alignments (see src/datamodules/alignment.py)."""

from __future__ import annotations

import numpy as np
import pytest

from src.datamodules.alignment import frame_labels, frame_times, gather, pool, segment_frames, track_at
from src.datamodules.corpus import Interval, Track

IVS = [Interval(0.00, 0.05, "a"), Interval(0.05, 0.12, "b"), Interval(0.20, 0.21, "c"), Interval(0.21, 0.30, "d")]


def test_frame_times():
    np.testing.assert_allclose(frame_times(4, 50.0, 0.0125), [0.0125, 0.0325, 0.0525, 0.0725])


def test_frame_labels_half_open_and_gaps():
    t = frame_times(16, 50.0, 0.0)  # 0, .02, ..., .30
    idx, ok = frame_labels(IVS, t)
    # t=.00,.02,.04 -> a; .06,.08,.10 -> b; .12 is the end of b (half-open) -> none; .14-.18 gap;
    # .20 -> c (its start); .22-.28 -> d; .30 = end of d -> none
    assert idx.tolist() == [0, 0, 0, 1, 1, 1, -1, -1, -1, -1, 2, 3, 3, 3, 3, -1]
    assert ok.sum() == 11


def test_segment_mean_and_center_and_short_segment_fallback():
    t = frame_times(16, 50.0, 0.0)
    lo, hi, valid = segment_frames(IVS, t, "mean", 50.0)
    assert lo.tolist() == [0, 3, 10, 11] and hi.tolist() == [3, 6, 11, 15] and valid.all()
    lo, hi, _ = segment_frames(IVS, t, "center", 50.0)
    # midpoints .025 -> frame 1 (rint(1.25)), .085 -> 4, .205 -> 10, .255 -> 13
    assert lo.tolist() == [1, 4, 10, 13] and (hi - lo).tolist() == [1, 1, 1, 1]
    short = [Interval(0.101, 0.109, "x")]  # no frame time inside: nearest frame to the midpoint .105 -> 5
    lo, hi, valid = segment_frames(short, t, "mean", 50.0)
    assert (lo.tolist(), hi.tolist(), valid.tolist()) == ([5], [6], [True])
    beyond = [Interval(0.40, 0.50, "z")]
    assert not segment_frames(beyond, t, "mean", 50.0)[2][0]


def test_wav2vec2_offset_shifts_labels():
    t = frame_times(3, 50.0, 0.0125)  # .0125, .0325, .0525
    idx, _ = frame_labels(IVS, t)
    assert idx.tolist() == [0, 0, 1]


def test_track_interpolation_nan_and_edges():
    tr = Track(100.0, np.array([[0.0], [1.0], [np.nan], [3.0], [4.0]], np.float32), ("x",))
    v = track_at(tr, np.array([0.0, 0.005, 0.01, 0.015, 0.035, 0.04, 0.044, 0.046, -0.006]))
    assert v[0, 0] == 0 and v[1, 0] == pytest.approx(0.5) and v[2, 0] == 1
    assert np.isnan(v[3, 0])  # between 1 and NaN
    assert v[4, 0] == pytest.approx(3.5) and v[5, 0] == 4
    assert v[6, 0] == 4  # within half a sample after the end: held
    assert np.isnan(v[7, 0]) and np.isnan(v[8, 0])  # beyond


def test_gather_and_pool():
    layer = np.arange(20, dtype=np.float16).reshape(10, 2)
    np.testing.assert_array_equal(gather(layer, np.array([3, 1])), [[6, 7], [2, 3]])
    out = pool(layer, np.array([0, 4]), np.array([2, 5]))
    np.testing.assert_allclose(out, [[1, 2], [8, 9]])
