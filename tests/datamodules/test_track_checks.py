"""Track files are checked when read: an inf names the file, track, channel and row; a declared
rate the data does not fit (210 Hz declared for 200 Hz data) names the rate the data implies.

Files are written with ``np.savez`` and the documented keys (``<track>.values``, ``.rate``,
``.names``), not with the project's writer."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.corpus import CorpusError, Interval, TextGridCorpus, Track, load_tracks, write_textgrid

SR = 16000


def _utt(folder, name="u1", seconds=2.0):
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(str(folder / f"{name}.wav"), np.zeros(int(seconds * SR), np.float32), SR, subtype="PCM_16")
    write_textgrid(folder / f"{name}.TextGrid", {"words": [Interval(0.1, 0.5, "hi")]}, seconds)


def _npz(path, rate, values, names):
    np.savez(path, **{"ema.values": values, "ema.rate": np.asarray(rate), "ema.names": np.asarray(names)})


NAMES = ["tt_x", "tt_y", "ul_y"]


def _values(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)


# ----------------------------------------------------------------------------- inf at read time


def test_inf_in_a_track_file_names_file_track_channel_and_row(tmp_path):
    v = _values(400)
    v[37, 1] = np.inf
    v[90, 1] = -np.inf
    v[5, 2] = np.nan  # NaN is a missing sample: allowed
    _utt(tmp_path)
    _npz(tmp_path / "u1.tracks.npz", 200.0, v, NAMES)
    msg = (r"tracks file .*u1\.tracks\.npz: track 'ema': channel 'tt_y' holds inf at row 37 \(t = 0\.185 s\); "
           r"inf values per channel: 'tt_y' \(2\)\. Mark missing samples as NaN")  # fmt: skip
    with pytest.raises(CorpusError, match=msg):
        load_tracks(tmp_path / "u1.tracks.npz")
    with pytest.raises(CorpusError, match=msg) as e:
        TextGridCorpus(tmp_path).annotation(0)
    assert "float16" not in str(e.value)  # before: a float16-overflow hint about the cache, at probe time


def test_inf_in_float64_values_and_in_a_track_built_in_memory(tmp_path):
    v = _values(400).astype(np.float64)
    v[0, 0] = -np.inf
    with pytest.raises(CorpusError, match=r"channel 'tt_x' holds -inf at row 0"):
        Track(200.0, v, tuple(NAMES))
    _npz(tmp_path / "t.npz", 200.0, v, NAMES)
    with pytest.raises(CorpusError, match=r"t\.npz: track 'ema': channel 'tt_x' holds -inf at row 0"):
        load_tracks(tmp_path / "t.npz")


def test_nan_only_tracks_still_load(tmp_path):
    v = _values(400)
    v[10:20, 0] = np.nan
    _utt(tmp_path)
    _npz(tmp_path / "u1.tracks.npz", 200.0, v, NAMES)
    got = TextGridCorpus(tmp_path).annotation(0).tracks["ema"]
    np.testing.assert_array_equal(got.values, v)  # NaN compared equal by assert_array_equal
    assert got.rate == 200.0 and got.names == tuple(NAMES)


# ----------------------------------------------------------------------------- the implied rate


def test_210_hz_declared_for_200_hz_data_names_the_implied_rate(tmp_path):
    _utt(tmp_path, seconds=2.0)
    _npz(tmp_path / "u1.tracks.npz", 210.0, _values(400), NAMES)  # 400 rows over 2 s: 200 Hz
    # within the duration tolerance: 400 / 210 = 1.905 s vs 2.000 s, allowed max(0.1 s, 5 %) = 0.1 s
    msg = (r"u1\.tracks\.npz: track 'ema' has 400 rows over 2\.000 s of audio: the data implies 200 Hz, but "
           r"210 Hz is declared \(420\.0 rows expected, allowed 2 rows \+ 1%: 6\.2\)")  # fmt: skip
    with pytest.raises(CorpusError, match=msg):
        TextGridCorpus(tmp_path).annotation(0)
    with pytest.raises(CorpusError, match=r"implies 200 Hz"):
        TextGridCorpus(tmp_path)[0]
    # the check can be switched off (a track that deliberately starts or ends away from the audio)
    assert TextGridCorpus(tmp_path, track_rate_tolerance=None).annotation(0).tracks["ema"].rate == 210.0


@pytest.mark.parametrize("declared, rows, ok", [
    (200.0, 400, True),   # exact
    (200.0, 402, True),   # 2 rows over (a closing row, framing): 2 <= 2 + 4
    (200.0, 394, True),   # 6 rows short: 6 <= 2 + 4
    (200.0, 393, False),  # 7 rows short: 7 > 6
    (195.0, 400, False),  # 2.5 % the other way: 10 rows > 2 + 3.9
    (203.0, 400, True),   # 1.5 %: 6 rows <= 2 + 4.06
])  # fmt: skip
def test_rate_tolerance_is_two_rows_plus_one_percent(tmp_path, declared, rows, ok):
    _utt(tmp_path, seconds=2.0)
    _npz(tmp_path / "u1.tracks.npz", declared, _values(rows), NAMES)
    c = TextGridCorpus(tmp_path)
    if ok:
        assert c.annotation(0).tracks["ema"].values.shape == (rows, 3)
    else:
        with pytest.raises(CorpusError, match=rf"implies {rows / 2:g} Hz, but {declared:g} Hz is declared"):
            c.annotation(0)


def test_rate_tolerance_parameters(tmp_path):
    _utt(tmp_path, seconds=2.0)
    _npz(tmp_path / "u1.tracks.npz", 200.0, _values(393), NAMES)
    assert (
        TextGridCorpus(tmp_path, track_rate_tolerance_frames=3).annotation(0).tracks["ema"].values.shape[0]
        == 393
    )
    assert (
        TextGridCorpus(tmp_path, track_rate_tolerance=0.02).annotation(0).tracks["ema"].values.shape[0] == 393
    )
