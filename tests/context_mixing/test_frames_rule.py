"""One interval -> frame rule and one frame-time formula: `alignment.segment_frames` (both named rules),
`context_mixing.words.word_frames` calling it, `src.layers.frame_times` used by alignment and the backbone.
References are hand-computed literals (frame k at k / rate s)."""

from types import SimpleNamespace

import numpy as np
import pytest

from src.backbones.base import SpeechBackbone
from src.context_mixing.common import ContextMixingError
from src.context_mixing.words import word_frames
from src.datamodules import alignment
from src.datamodules.corpus import Interval
from src.layers import frame_times


def test_frame_times_one_formula():
    np.testing.assert_allclose(frame_times(3, 50.0, 0.0125), [0.0125, 0.0325, 0.0525], rtol=0, atol=1e-15)
    assert alignment.frame_times is frame_times
    bb = SimpleNamespace(frame_rate=50.0, frame_offset=0.0125)
    np.testing.assert_array_equal(SpeechBackbone.frame_times(bb, 4), frame_times(4, 50.0, 0.0125))


IVS = [Interval(0.1, 0.3, "a"), Interval(0.301, 0.305, "short"), Interval(0.35, 0.6, "clipped")]


def test_segment_frames_interval_rule():
    t = frame_times(20, 50.0, 0.0)  # 0.00 .. 0.38 s
    lo, hi, valid = alignment.segment_frames(IVS, t, "mean", 50.0, rule="interval")
    assert lo.tolist() == [5, 15, 18] and hi.tolist() == [15, 16, 20]  # "short": nearest frame to 0.303 s
    assert valid.tolist() == [True, True, False]  # midpoint 0.475 s: beyond the last frame


def test_segment_frames_ceil_inclusive_rule():
    t = frame_times(20, 50.0, 0.0)
    lo, hi, valid = alignment.segment_frames(IVS, t, "mean", 50.0, rule="ceil_inclusive")
    # ceil(5)..ceil(15) | ceil(15.05)..ceil(15.25) | ceil(17.5)..ceil(30) clipped to 19
    assert lo.tolist() == [5, 16, 18] and hi.tolist() == [16, 17, 20]
    assert valid.tolist() == [True, True, True]
    # 0.07 * 100 = 7.000000000000001 in floating point: rounded before the ceiling, frame 7
    lo, hi, _ = alignment.segment_frames([Interval(0.07, 0.09, "x")], frame_times(20, 100.0, 0.0), "mean", 100.0,
                                         rule="ceil_inclusive")  # fmt: skip
    assert (lo.tolist(), hi.tolist()) == ([7], [10])
    lo, hi, valid = alignment.segment_frames([Interval(0.5, 0.6, "x")], t, "mean", 50.0, rule="ceil_inclusive")
    assert not valid[0]
    with pytest.raises(ValueError, match="frame rule"):
        alignment.segment_frames(IVS, t, "mean", 50.0, rule="floor")
    with pytest.raises(ValueError, match="ceil_inclusive"):
        alignment.segment_frames(IVS, t, "center", 50.0, rule="ceil_inclusive")


def test_word_frames_uses_the_rule():
    words = [("a", 0.1, 0.3), ("short", 0.301, 0.305), ("b", 0.31, 0.39)]
    got = word_frames(words, 20, 50.0, 0.0, mapping="interval")
    assert [g.tolist() for g in got] == [list(range(5, 15)), [15], [16, 17, 18, 19]]
    got = word_frames(words, 20, 50.0, 0.0, mapping="ceil_inclusive")
    assert [g.tolist() for g in got] == [list(range(5, 16)), [16], [16, 17, 18, 19]]
    assert all(g.dtype == np.int64 for g in got)
    with pytest.raises(ContextMixingError, match="frame_mapping"):
        word_frames(words, 20, 50.0, 0.0, mapping="floor")
