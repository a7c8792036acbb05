"""data=mngu0 and data=mocha on folders written in their real layouts (../shared/CORPORA.md §3, §4)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.mngu0 import MIDSAGITTAL, Mngu0Corpus
from src.datamodules.mocha import ARTICULATORS, MochaCorpus
from tests.corpus_writers.est import MOCHA_CHANNELS, write_est, write_mocha_lab, write_xlabel
from tests.corpus_writers.timit import write_sphere

SR = 16000
# mngu0 channel names (CORPORA.md §3.2): the midsagittal py/pz among other quantities, in a made-up order
MNGU0_CHANNELS = ["T1_px", "T1_py", "T1_pz", "T1_ox", "T1_rms", "T2_py", "T2_pz", "T3_py", "T3_pz", "jaw_py", "jaw_pz",
                  "upperlip_py", "upperlip_pz", "lowerlip_py", "lowerlip_pz", "ref_px", "T1_newflag", "taxdist"]  # fmt: skip
PHONES = [("#", 0.0, 0.395), ("D", 0.395, 0.48), ("@", 0.48, 0.55), ("#", 0.55, 2.0)]


def _pcm(seed, n):
    return np.random.default_rng(seed).integers(-2000, 2000, n).astype(np.int16)


def _mngu0(root, k=1, frames=400, sep="\t", nan_rows=(10, 11, 12)):
    stem = f"mngu0_s1_{k:04d}"
    rng = np.random.default_rng(k)
    v = np.round(rng.normal(0, 20, size=(frames, len(MNGU0_CHANNELS))), 3)  # (T, K) mm
    v[list(nan_rows), 1] = np.nan  # NaNs in T1_py (CORPORA.md §3.5)
    write_est(root / "ema_basic_data" / f"{stem}.ema", v, MNGU0_CHANNELS, rate=200)
    write_xlabel(root / "phone_labels" / f"{stem}.lab", [Interval(s, e, lab) for lab, s, e in PHONES], sep=sep)
    (root / "wav_16kHz").mkdir(parents=True, exist_ok=True)
    sf.write(str(root / "wav_16kHz" / f"{stem}.wav"), _pcm(k, frames * SR // 200), SR, subtype="PCM_16")
    return stem, v


def test_mngu0_every_field(tmp_path):
    _, v1 = _mngu0(tmp_path, 1)
    _, v2 = _mngu0(tmp_path, 2, sep=" ")  # labels separated by spaces only
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "txt.done.data.train").write_text('( mngu0_s1_0001 "The birch canoe slid." )\n')
    c = Mngu0Corpus(tmp_path)
    assert c.ids == ["mngu0_s1_0001", "mngu0_s1_0002"] and c.speaker(0) == "mngu0"
    for i, v in enumerate((v1, v2)):
        u = c[i]
        np.testing.assert_array_equal(u.audio, _pcm(i + 1, 400 * SR // 200).astype(np.float32) / 32768)
        assert u.tiers == {"phones": [Interval(s, e, lab) for lab, s, e in PHONES]}
        tr = u.tracks["ema"]
        assert tr.names == tuple(MIDSAGITTAL) and tr.rate == 200
        cols = [MNGU0_CHANNELS.index(n) for n in MIDSAGITTAL]
        np.testing.assert_allclose(tr.values, v[:, cols], atol=1e-5, equal_nan=True)
        assert np.isnan(tr.values[10:13, 0]).all() and not np.isnan(tr.values[:, 1:]).any()
    assert c.annotation(0).text == "The birch canoe slid." and c.annotation(1).text == ""
    every = Mngu0Corpus(tmp_path, channels="all", position_scale=10.0).annotation(0).tracks["ema"]
    assert every.names == tuple(MNGU0_CHANNELS)
    np.testing.assert_allclose(every.values[:, 0], v1[:, 0] * 10, rtol=1e-6)  # T1_px: a position, scaled
    np.testing.assert_allclose(every.values[:, 3], v1[:, 3], rtol=1e-6)  # T1_ox: not a position


def test_mngu0_bad_input(tmp_path):
    _mngu0(tmp_path, 1)
    with pytest.raises(CorpusError, match=r"mngu0_s1_0001\.ema: no channels \['TB_x'\].*'T1_px'"):
        Mngu0Corpus(tmp_path, channels=["TB_x", "T1_py"])
    with pytest.raises(CorpusError, match=r"data\.filters\.id=\['x'\] selects no utterance.*\['mngu0_s1_0001'\]"):
        Mngu0Corpus(tmp_path, filters={"id": "x"})
    (tmp_path / "nema").mkdir()
    (tmp_path / "nema" / "mngu0_s1_0009.ema").write_text("0.1 0.2\n")  # headerless normalised copy: skipped
    (tmp_path / "wav_16kHz" / "mngu0_s1_0001.wav").unlink()
    with pytest.raises(CorpusError, match=r"1 EMA files have no audio.*mngu0_s1_0001\.ema"):
        Mngu0Corpus(tmp_path)
    _mngu0(tmp_path, 1, frames=200)  # EMA and audio 1.0 s, labels to 2.0 s
    with pytest.raises(CorpusError, match=r"mngu0_s1_0001\.lab: utterance 'mngu0_s1_0001' tier 'phones' label '#' ends at 2\.0000 s"):
        Mngu0Corpus(tmp_path)


def test_mngu0_track_must_match_audio(tmp_path):
    _mngu0(tmp_path, 1, frames=600)  # 3 s of EMA
    sf.write(str(tmp_path / "wav_16kHz" / "mngu0_s1_0001.wav"), _pcm(1, 2 * SR), SR, subtype="PCM_16")  # 2 s
    with pytest.raises(CorpusError, match=r"mngu0_s1_0001\.ema: track 'ema' lasts 3\.000 s.*audio lasts 2\.000 s"):
        Mngu0Corpus(tmp_path)


def _mocha(root, spk="fsew0", k=1, frames=1000, fmt="01"):
    stem = f"{spk}_{k:03d}"
    v = np.round(np.random.default_rng(k).uniform(1000, 5000, size=(frames, 20)), 2)  # 0.01 mm units
    valid = np.ones(frames, bool)
    valid[100] = False
    d = root / spk
    write_est(d / f"{stem}.ema", v, MOCHA_CHANNELS, rate=500, valid=valid)
    write_sphere(d / f"{stem}.wav", _pcm(k, frames * SR // 500), byte_format=fmt)
    write_mocha_lab(d / f"{stem}.lab", [Interval(0.0, 0.42, "sil"), Interval(0.42, 0.61, "breath"),
                                        Interval(0.61, 0.7, "dh"), Interval(0.7, 1.9, "ii")])  # fmt: skip
    return v


def test_mocha_every_field(tmp_path):
    v = _mocha(tmp_path, "fsew0", 1)
    _mocha(tmp_path / "msak0_v1.1", "msak0", 2, fmt="10")
    c = MochaCorpus(tmp_path)
    assert c.ids == ["fsew0_001", "msak0_002"] and [c.speaker(i) for i in range(2)] == ["fsew0", "msak0"]
    u = c[0]
    np.testing.assert_array_equal(u.audio, _pcm(1, 2 * SR).astype(np.float32) / 32768)
    np.testing.assert_array_equal(c[1].audio, _pcm(2, 2 * SR).astype(np.float32) / 32768)  # big-endian SPHERE
    assert u.tiers["phones"] == [Interval(0.0, 0.42, "sil"), Interval(0.42, 0.61, "sil"), Interval(0.61, 0.7, "dh"),
                                 Interval(0.7, 1.9, "ii")]  # fmt: skip
    tr = u.tracks["ema"]
    assert tr.names == tuple(ARTICULATORS) and tr.rate == 500 and "v_x" in tr.names
    stripped = [n.strip() for n in MOCHA_CHANNELS]
    expect = v[:, [stripped.index(n) for n in ARTICULATORS]].astype(np.float32) / 100  # mm
    expect[100] = np.nan  # the break frame
    np.testing.assert_allclose(tr.values, expect, rtol=1e-6, equal_nan=True)
    keep = MochaCorpus(tmp_path, breath_as_silence=False, channels="all", filters={"speaker": ["msak0"]})
    assert keep.ids == ["msak0_002"] and keep.annotation(0).tiers["phones"][1].label == "breath"
    assert keep.annotation(0).tracks["ema"].names == tuple(n for n in stripped if n != "****")


def test_mocha_bad_input(tmp_path):
    _mocha(tmp_path, "fsew0", 1)
    with pytest.raises(CorpusError, match=r"data\.filters\.speaker=\['maps0'\] selects no utterance.*\['fsew0'\]"):
        MochaCorpus(tmp_path, filters={"speaker": "maps0"})
    ema = tmp_path / "fsew0" / "fsew0_001.ema"
    ema.write_bytes(ema.read_bytes()[:-40])
    with pytest.raises(CorpusError, match=r"fsew0_001\.ema is truncated"):
        MochaCorpus(tmp_path)
    _mocha(tmp_path, "fsew0", 1)
    write_sphere(tmp_path / "fsew0" / "fsew0_001.wav", _pcm(1, 2 * SR), coding="pcm,embedded-shorten-v2.00")
    with pytest.raises(CorpusError, match=r"fsew0_001\.wav is compressed.*sph2pipe"):
        MochaCorpus(tmp_path)
    _mocha(tmp_path, "fsew0", 1)
    write_mocha_lab(tmp_path / "fsew0" / "fsew0_001.lab", [Interval(0.0, 2.5, "sil")])
    with pytest.raises(CorpusError, match=r"fsew0_001\.lab: .*'sil' ends at 2\.5000 s, past the end of its audio \(2\.0000 s"):
        MochaCorpus(tmp_path)
