"""data=haskins: HPRC .mat files written in the real layout (CORPORA.md 1.2, 1.6), read back field by field."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy import signal

from src.datamodules.corpus import CorpusError, Interval, Track, Utterance
from src.datamodules.haskins import HaskinsCorpus, read_hprc_mat, resample_track

SENSORS = ["TR", "TB", "TT", "UL", "LL", "ML", "JAW", "JAWL"]
WORDS = [
    ("sp", 0.0, 0.2),
    ("THE", 0.2, 0.2698),
    ("BIRCH", 0.2698, 0.619),
    ("CANOE", 0.619, 1.05),
    ("sp", 1.05, 1.2),
]
PHONES = [("sp", 0.0, 0.2), ("DH", 0.2, 0.24), ("AH0", 0.24, 0.2698), ("B", 0.2698, 0.33), ("ER1", 0.33, 0.5),
          ("CH", 0.5, 0.619), ("K", 0.619, 0.7), ("AH0", 0.7, 0.8), ("N", 0.8, 0.9), ("UW1", 0.9, 1.05),
          ("sp", 1.05, 1.2)]  # fmt: skip
N_AUDIO = int(1.2 * 44100)  # 52920 samples
T_EMA = 122  # 1.22 s at 100 Hz: slightly longer than the audio, as in the real files


def _empty():
    return np.zeros((1, 0))


def _struct(rows, fields):
    s = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for k, r in enumerate(rows):
        s[0, k] = r
    return s


def write_real_layout(path: Path, seed: int = 0, sensors=SENSORS, audio=True, words=WORDS, compact_srate=True,
                      sentence="The birch canoe.") -> dict:  # fmt: skip
    """One HPRC file built literally from the spec (not with the writer under test); returns what it holds."""
    rng = np.random.default_rng(seed)
    fields = ["NAME", "SRATE", "SIGNAL", "SOURCE", "SENTENCE", "WORDS", "PHONES", "LABELS"]
    sig_audio = rng.uniform(-0.5, 0.5, (N_AUDIO, 1)).astype(np.float32)
    entries = []
    if audio:
        w = _struct([(lab, np.array([[s, e]])) for lab, s, e in words], ["LABEL", "OFFS"])
        p = _struct([(lab, np.array([[s, e]])) for lab, s, e in PHONES], ["LABEL", "OFFS"])
        lab = _struct(
            [(lab, s * 1000, (e - s) * 1000, _empty()) for lab, s, e in words],
            ["NAME", "OFFSET", "VALUE", "HOOK"],
        )
        srate = (
            np.array([[44100]], dtype=np.uint16) if compact_srate else 44100.0
        )  # real files: uint16 storage
        entries.append(("AUDIO", srate, sig_audio, "S07_sen01_HS01_B01_R01_0004_01", sentence, w, p, lab))
    sigs = {}
    for s in sensors:
        sigs[s] = (rng.standard_normal((T_EMA, 6)) * 10).astype(np.float32)
        srate = np.array([[100]], dtype=np.uint8) if compact_srate else 100.0
        entries.append((s, srate, sigs[s], _empty(), _empty(), _empty(), _empty(), _empty()))
    arr = np.empty((1, len(entries)), dtype=[(f, object) for f in fields])
    for k, e in enumerate(entries):
        arr[0, k] = e
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {path.stem: arr}, do_compression=True)
    return {"audio": sig_audio[:, 0], "sensors": sigs}


@pytest.fixture
def hprc(tmp_path):
    root = tmp_path / "HPRC"
    held = {}
    names = [
        "F02_B01_S26_R01_N",
        "F02_B01_S57_R01_N",
        "F02_B02_S01_R01_N",
        "F02_B01_S26_R02_F",
        "M02_B01_S26_R01_N",
    ]
    for k, n in enumerate(names):
        sensors = SENSORS if k != 1 else SENSORS[::-1]  # entries in another order: looked up by NAME
        held[n] = write_real_layout(root / n[:3] / "data" / f"{n}.mat", seed=k, sensors=sensors)
    (root / "F02" / "data" / "F02_palate.mat").write_bytes(b"not a mat file")  # palate traces: skipped unread
    return root, held


def test_mat_layout_is_the_real_one(hprc):
    root, _ = hprc
    p = root / "F02" / "data" / "F02_B01_S26_R01_N.mat"
    assert scipy.io.whosmat(str(p)) == [("F02_B01_S26_R01_N", (1, 9), "struct")]
    assert p.read_bytes()[:19] == b"MATLAB 5.0 MAT-file"


def test_every_field_read_back(hprc):
    root, held = hprc
    c = HaskinsCorpus(root)
    assert c.ids == sorted(held)  # sorted by name; palate file left out
    u = c[c.ids.index("F02_B01_S57_R01_N")]
    h = held["F02_B01_S57_R01_N"]
    assert u.speaker == "F02" and u.text == "The birch canoe." and u.sample_rate == 16000
    assert c.info(c.ids.index("F02_B01_S57_R01_N")) == {"participant": "F02", "block": 1, "sentence": 57,
                                                        "repetition": 1, "rate": "N"}  # fmt: skip
    ref = signal.resample_poly(h["audio"].astype(np.float64), 160, 441).astype(np.float32)  # 44.1 -> 16 kHz
    np.testing.assert_array_equal(u.audio, ref)
    assert len(u.audio) == -(-N_AUDIO * 160 // 441)
    assert u.tiers["words"] == [Interval(s, e, lab) for lab, s, e in WORDS]
    assert u.tiers["phones"] == [Interval(s, e, lab) for lab, s, e in PHONES]  # stress digits and sp kept
    tr = u.tracks["ema"]
    assert tr.rate == 100.0
    assert tr.names == (
        "TR_x",
        "TR_z",
        "TB_x",
        "TB_z",
        "TT_x",
        "TT_z",
        "UL_x",
        "UL_z",
        "LL_x",
        "LL_z",
        "JAW_x",
        "JAW_z",
    )
    for k, name in enumerate(tr.names):
        sensor, axis = name.split("_")
        np.testing.assert_array_equal(tr.values[:, k], h["sensors"][sensor][:, {"x": 0, "z": 2}[axis]])
    ann = c.annotation(c.ids.index("F02_B01_S57_R01_N"))
    assert (
        ann.audio.size == 0
        and ann.tiers == u.tiers
        and c.num_samples(c.ids.index("F02_B01_S57_R01_N")) == len(ref)
    )
    raw = read_hprc_mat(root / "F02" / "data" / "F02_B01_S57_R01_N.mat")
    a = raw["audio_entry"]
    assert a["srate"] == 44100.0 and a["source"] == "S07_sen01_HS01_B01_R01_0004_01"
    assert [(n, round(o, 6), round(v, 6)) for n, o, v in a["labels"]] == \
        [(lab, round(s * 1000, 6), round((e - s) * 1000, 6)) for lab, s, e in WORDS]  # fmt: skip
    assert list(raw["entries"]) == ["AUDIO", *SENSORS[::-1]] and raw["entries"]["ML"]["srate"] == 100.0


def test_channels_all_and_lateral(hprc):
    root, held = hprc
    c = HaskinsCorpus(root, channels="all", participants=["M02"])
    tr = c[0].tracks["ema"]
    assert tr.names == tuple(f"{s}_{a}" for s in SENSORS for a in "xyz")
    np.testing.assert_array_equal(
        tr.values[:, tr.names.index("JAWL_y")], held["M02_B01_S26_R01_N"]["sensors"]["JAWL"][:, 1]
    )
    c = HaskinsCorpus(root, channels=["TT_y"], participants="M02")
    np.testing.assert_array_equal(
        c[0].tracks["ema"].values[:, 0], held["M02_B01_S26_R01_N"]["sensors"]["TT"][:, 1]
    )


def test_filters(hprc):
    root, _ = hprc
    c = HaskinsCorpus(root, participants=["F02"], blocks=["B01"], repetitions=[1], rates=["normal"])
    assert c.ids == ["F02_B01_S26_R01_N", "F02_B01_S57_R01_N"]
    assert HaskinsCorpus(root, sentences=["S26"], rates="F").ids == ["F02_B01_S26_R02_F"]
    every = HaskinsCorpus(root)
    assert {every.speaker(i) for i in range(len(every))} == {"F02", "M02"}
    with pytest.raises(CorpusError, match=r"data.participants=\['F09'\] selects no file.*\['F02', 'M02'\]"):
        HaskinsCorpus(root, participants=["F09"])
    with pytest.raises(CorpusError, match=r"data.blocks=\['B07'\].*\['B01', 'B02'\]"):
        HaskinsCorpus(root, blocks=[7])
    with pytest.raises(CorpusError, match=r"data.rates.*\['F'\].*after the other filters.*\['N'\]"):
        HaskinsCorpus(root, participants=["M02"], rates=["F"])


def test_order_file_and_max(hprc, tmp_path):
    root, _ = hprc
    order = tmp_path / "order.txt"
    order.write_text("F02_B01_S57_R01_N.mat\nF02_B01_S26_R01_N\n")
    c = HaskinsCorpus(root, participants=["F02"], blocks=[1], repetitions=[1], order_file=order)
    assert c.ids == ["F02_B01_S57_R01_N", "F02_B01_S26_R01_N"]
    with pytest.raises(CorpusError, match="does not list 1 selected utterances"):
        HaskinsCorpus(root, participants=["F02"], blocks=[1], order_file=order)
    assert len(HaskinsCorpus(root, max_utterances=2)) == 2


def test_bad_input_names_the_file(tmp_path):
    p = tmp_path / "a" / "F01_B01_S01_R01_N.mat"
    write_real_layout(p, audio=False)
    with pytest.raises(CorpusError, match=r"F01_B01_S01_R01_N.mat: no AUDIO entry.*'TR'"):
        HaskinsCorpus(tmp_path / "a")
    p = tmp_path / "b" / "F01_B01_S01_R01_N.mat"
    write_real_layout(p, sensors=["TR", "TT"])
    with pytest.raises(CorpusError, match=r"F01_B01_S01_R01_N.mat: no channel\(s\) \['TB_x', 'TB_z'.*the file has "
                       r"\['TR_x', 'TR_y', 'TR_z', 'TT_x', 'TT_y', 'TT_z'\]"):  # fmt: skip
        HaskinsCorpus(tmp_path / "b")
    p = tmp_path / "c" / "F01_B01_S01_R01_N.mat"
    write_real_layout(p, words=[*WORDS, ("LATE", 1.2, 1.5)])  # audio ends at 1.2 s
    with pytest.raises(CorpusError, match=r"F01_B01_S01_R01_N.mat\): tier 'words' interval 'LATE' ends at 1.500 s, "
                       r"beyond the audio end 1.200"):  # fmt: skip
        HaskinsCorpus(tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "F01_B01_S01_R01_N.mat").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    with pytest.raises(CorpusError, match="cannot read HPRC file .*F01_B01_S01_R01_N.mat"):
        HaskinsCorpus(tmp_path / "d")
    with pytest.raises(CorpusError, match="does not exist"):
        HaskinsCorpus(tmp_path / "nowhere")


def test_srate_stored_as_double_also_read(tmp_path):
    write_real_layout(tmp_path / "F01_B01_S01_R01_N.mat", compact_srate=False)
    c = HaskinsCorpus(tmp_path)
    assert c[0].tracks["ema"].rate == 100.0 and len(c[0].audio) == -(-N_AUDIO * 160 // 441)


def test_ema_resampling_methods(hprc):
    root, held = hprc
    x = np.stack(
        [held["F02_B01_S26_R01_N"]["sensors"]["TR"][:, 0], held["F02_B01_S26_R01_N"]["sensors"]["TR"][:, 2]],
        1,
    )
    c = HaskinsCorpus(
        root, channels=["TR_x", "TR_z"], ema_rate=50, participants=["F02"], blocks=[1], repetitions=[1]
    )
    tr = c[c.ids.index("F02_B01_S26_R01_N")].tracks["ema"]
    assert tr.rate == 50.0 and tr.values.shape == (61, 2)
    ref = signal.decimate(x.astype(np.float64), 2, axis=0, zero_phase=True)  # the documented method
    np.testing.assert_allclose(tr.values, ref.astype(np.float32), rtol=0, atol=1e-5)
    poly = resample_track(x, 100, 50, "poly")
    np.testing.assert_allclose(
        poly, signal.resample_poly(x.astype(np.float64), 1, 2, axis=0, padtype="line"), atol=1e-4
    )
    # a pure 2 Hz sine keeps its samples at the even times (aligned, no delay), within the filter's ripple
    t = np.arange(200) / 100
    s = np.sin(2 * np.pi * 2 * t)[:, None]
    for m in ("decimate", "poly"):
        out = resample_track(s, 100, 50, m)[:, 0]
        np.testing.assert_allclose(out[10:-10], s[::2, 0][10:-10], atol=0.02)
    # NaN samples stay missing at the new rate (near them), the rest is filtered normally
    s2 = s.copy()
    s2[100] = np.nan
    out = resample_track(s2, 100, 50, "decimate")[:, 0]
    assert np.isnan(out[50]) and np.isfinite(np.delete(out, [50])).all()  # output 50 stands for input 100
    with pytest.raises(CorpusError, match="integer factor"):
        resample_track(s, 100, 30, "decimate")


def test_write_hprc_round_trip(tmp_path):
    """The writer other tests use: Utterances -> HPRC layout -> data=haskins gives them back exactly."""
    from tests.corpus_writers.hprc import write_hprc

    rng = np.random.default_rng(3)
    utts = []
    for k, spk in enumerate(["slt", "kdl"]):
        n = 16000 + 800 * k
        names = ("T1_x", "T1_y", "T1_z", "jaw_x", "jaw_z")
        utts.append(Utterance(f"{spk}_{k}", rng.uniform(-0.5, 0.5, n).astype(np.float32), 16000, spk, f"hello {k}",
                              {"words": [Interval(0.1, 0.5, "HELLO")], "phones": [Interval(0.1, 0.3, "HH"),
                               Interval(0.3, 0.5, "AH0")], "syllables": [Interval(0.1, 0.5, "1")]},
                              {"ema": Track(200.0, rng.standard_normal((n // 80, 5)).astype(np.float32), names)}))  # fmt: skip
    paths = write_hprc(utts, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["kdl_B01_S02_R01_N.mat", "slt_B01_S01_R01_N.mat"]
    c = HaskinsCorpus(tmp_path, channels=["T1_x", "T1_y", "T1_z", "jaw_x", "jaw_z"])
    for u in utts:
        got = c[c.ids.index(paths[u.id].stem)]
        assert got.audio.tobytes() == u.audio.tobytes()  # same rate: no resampling, bit-exact
        assert got.text == u.text and got.speaker == u.speaker
        assert got.tiers == {"words": u.tiers["words"], "phones": u.tiers["phones"]}
        assert got.tracks["ema"].rate == 200.0 and got.tracks["ema"].names == u.tracks["ema"].names
        assert got.tracks["ema"].values.tobytes() == u.tracks["ema"].values.tobytes()
    raw = scipy.io.loadmat(str(paths["slt_0"]), mat_dtype=True)["slt_B01_S01_R01_N"]
    assert raw.dtype.names == ("NAME", "SRATE", "SIGNAL", "SOURCE", "SENTENCE", "WORDS", "PHONES", "LABELS")
    assert [str(e["NAME"][0]) for e in raw[0]] == ["AUDIO", "T1", "jaw"] and raw[0, 1]["SIGNAL"].shape == (
        200,
        6,
    )
    assert raw[0, 1]["SOURCE"].shape == (1, 0)  # empty fields as in real files
    np.testing.assert_allclose(raw[0, 0]["LABELS"][0, 0]["VALUE"], [[400.0]])  # word duration in ms
    assert Fraction(16000, 44100) == Fraction(160, 441)
