"""EST Track reader on files written in the real layouts (../shared/CORPORA.md §2, §4.2)."""

from __future__ import annotations

import numpy as np
import pytest

from src.datamodules.corpus import CorpusError
from src.datamodules.est import est_to_track, read_est
from tests.corpus_writers.est import MOCHA_CHANNELS, write_est

RATE = 500.0


def _mocha_values(T=40, seed=0):
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(1000, 5000, size=(T, 20)), 2)  # (T, 20), 0.01 mm units, exact at %f


def test_literal_minimal_example(tmp_path):
    """CORPORA.md §2.3, byte for byte: the header lines and a <f4 (5, 5) body, written here by hand."""
    lines = ["EST_File Track", "DataType binary", "NumFrames 5", "ByteOrder 01", "NumChannels 3", "EqualSpace 1",
             "BreaksPresent true", "CommentChar ;", "", "Channel_0 T1_py", "Channel_1 T1_pz", "Channel_2 v_x ",
             "EST_Header_End"]  # fmt: skip
    t = np.arange(5) * 0.005
    abc = np.arange(15, dtype=np.float32).reshape(5, 3) - 7.5
    body = np.concatenate([t[:, None], np.ones((5, 1)), abc], axis=1).astype("<f4")
    p = tmp_path / "x.ema"
    p.write_bytes(("\n".join(lines) + "\n").encode() + body.tobytes())
    est = read_est(p)
    assert est.raw_names == ("T1_py", "T1_pz", "v_x ") and est.names == ("T1_py", "T1_pz", "v_x")
    np.testing.assert_array_equal(est.times, t.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(est.values, abc)
    assert est.valid.all() and est.rate() == pytest.approx(200.0, rel=1e-5)
    assert est.header == {"DataType": "binary", "NumFrames": "5", "ByteOrder": "01", "NumChannels": "3",
                          "EqualSpace": "1", "BreaksPresent": "true", "CommentChar": ";"}  # fmt: skip
    # the writer used by the other tests produces the same bytes
    q = write_est(tmp_path / "y.ema", abc, ["T1_py", "T1_pz", "v_x "], times=t)
    assert q.read_bytes() == p.read_bytes()


@pytest.mark.parametrize("data_type, order, style", [("binary", "01", "mocha"), ("binary", "10", "mocha"),
                                                     ("ascii", "01", "est"), ("ascii", "01", "mocha"),
                                                     ("binary", "10", "est")])  # fmt: skip
def test_mocha_header_every_field(tmp_path, data_type, order, style):
    v = _mocha_values()
    valid = np.ones(len(v), bool)
    valid[[3, 17]] = False
    p = write_est(tmp_path / "msak0_001.ema", v, MOCHA_CHANNELS, rate=RATE, valid=valid, data_type=data_type,
                  byte_order=order, style=style)  # fmt: skip
    est = read_est(p)
    assert est.raw_names == MOCHA_CHANNELS  # trailing spaces kept verbatim
    assert est.names[12] == "v_x" and est.names[13] == "****"
    assert [est.names[i] for i in est.used] == [n.strip() for n in MOCHA_CHANNELS if n != "****"]
    np.testing.assert_allclose(est.times, np.arange(len(v)) / RATE, atol=1e-6)
    np.testing.assert_array_equal(est.valid, valid)
    np.testing.assert_allclose(est.values, v.astype(np.float32), rtol=0, atol=1e-3)
    assert est.header["DataType"] == data_type and est.header["NumFrames"] == str(len(v))
    assert est.rate() == pytest.approx(RATE, rel=1e-4)


def test_ascii_and_binary_twins_agree(tmp_path):
    v = _mocha_values(seed=3)
    a = read_est(write_est(tmp_path / "a.ema", v, MOCHA_CHANNELS, rate=RATE, data_type="ascii", style="est"))
    b = read_est(write_est(tmp_path / "b.ema", v, MOCHA_CHANNELS, rate=RATE))
    np.testing.assert_array_equal(a.values, b.values)  # both float32 of the same 2-decimal values
    np.testing.assert_allclose(a.times, b.times, atol=1e-6)


def test_no_break_column(tmp_path):
    v = np.arange(12.0).reshape(4, 3)
    est = read_est(write_est(tmp_path / "x.ema", v, ["a", "b", "c"], rate=100, breaks=False, data_type="ascii"))
    np.testing.assert_array_equal(est.values, v)
    assert est.valid.all() and est.header.get("BreaksPresent") is None


def test_to_track_breaks_scale_channels(tmp_path):
    v = _mocha_values()
    valid = np.ones(len(v), bool)
    valid[5] = False
    v[7, 12] = np.nan  # a NaN in v_x
    est = read_est(write_est(tmp_path / "x.ema", v, MOCHA_CHANNELS, rate=RATE, valid=valid))
    tr = est_to_track(est, ["tt_x", "v_x", "td_y"], scale=0.01, rate=500)
    assert tr.names == ("tt_x", "v_x", "td_y") and tr.rate == 500
    expect = v[:, [4, 12, 16]].astype(np.float32).astype(np.float64) * 0.01
    expect[5] = np.nan
    np.testing.assert_allclose(tr.values, expect, rtol=1e-6, equal_nan=True)
    assert np.isnan(tr.values[7, 1]) and not np.isnan(tr.values[7, 0])
    with pytest.raises(CorpusError, match=r"no channel '\*\*\*\*'.*'ui_x'"):
        est_to_track(est, ["****"])
    with pytest.raises(CorpusError, match=r"x\.ema: frames are 2 ms apart \(500 Hz\), but the corpus rate is 200 Hz"):
        est_to_track(est, ["tt_x"], rate=200)


def test_to_track_time_offsets(tmp_path):
    v = np.arange(10.0)[:, None]
    # first frame at 3 / 100 s: three NaN rows put row j at j / rate
    est = read_est(write_est(tmp_path / "a.ema", v, ["a"], times=(np.arange(10) + 3) / 100))
    tr = est_to_track(est, ["a"], rate=100)
    np.testing.assert_array_equal(tr.values[:, 0], np.r_[[np.nan] * 3, np.arange(10.0)])
    # half-frame offset: linear interpolation onto j / rate
    est = read_est(write_est(tmp_path / "b.ema", v, ["a"], times=(np.arange(10) + 0.5) / 100))
    tr = est_to_track(est, ["a"], rate=100)
    np.testing.assert_allclose(tr.values[1:, 0], np.arange(9) + 0.5, atol=1e-5)
    assert np.isnan(tr.values[0, 0]) and len(tr.values) == 10


def test_bad_files(tmp_path):
    v = np.zeros((6, 3))
    names = ["a", "b", "c"]
    p = write_est(tmp_path / "n.ema", v, names, rate=100, declared_channels=2)
    with pytest.raises(CorpusError, match=r"n\.ema: the header declares NumChannels 2 but names channels \[0, 1, 2\]"):
        read_est(p)
    # the header names 2 channels, the body holds 3 per frame
    p = write_est(tmp_path / "b.ema", np.zeros((6, 3)), names, rate=100)
    txt = p.read_bytes().replace(b"NumChannels 3", b"NumChannels 2").replace(b"Channel_2 c\n", b"")
    p.write_bytes(txt)
    with pytest.raises(CorpusError, match=r"b\.ema is longer.*5 float32 columns per frame.*NumChannels 2 disagrees with the body"):
        read_est(p)
    p = write_est(tmp_path / "t.ema", v, names, rate=100)
    p.write_bytes(p.read_bytes()[:-6])
    with pytest.raises(CorpusError, match=r"t\.ema is truncated: the header declares 6 frames x 5 float32 columns.*= 120 bytes, the body has 114"):
        read_est(p)
    p = write_est(tmp_path / "a.ema", v, names, rate=100, data_type="ascii")
    lines = p.read_text().splitlines(True)
    lines[-2] = lines[-2].rstrip() + " 7.0\n"
    p.write_text("".join(lines))
    with pytest.raises(CorpusError, match=r"a\.ema: body line 5 has 6 values, but the header declares NumChannels 3"):
        read_est(p)
    p = write_est(tmp_path / "f.ema", v, names, rate=100, data_type="ascii", declared_frames=7)
    with pytest.raises(CorpusError, match=r"f\.ema: the header declares NumFrames 7, the body has 6"):
        read_est(p)
    (tmp_path / "z.ema").write_bytes(b"0.0 1.0 2.0\n")
    with pytest.raises(CorpusError, match=r"z\.ema is not an EST file"):
        read_est(tmp_path / "z.ema")
