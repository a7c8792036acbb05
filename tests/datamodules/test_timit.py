"""data=timit on folders written in the TIMIT layout (../shared/CORPORA.md §5), the phone folding, the core split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.datamodules.corpus import CorpusError, Interval, Utterance
from src.datamodules.labels import LabelError, LabelNormalization
from src.datamodules.splits import SplitError, group_keys, split_utterances
from src.datamodules.timit import CORE_TEST_SPEAKERS, DEV_SPEAKERS, TimitCorpus, phone_map
from tests.corpus_writers.timit import write_sphere, write_timit

N = 12000
# CORPORA.md §5.3: SA1's first phones and words (the word "your" overlaps "had"); the tail is ours
PHN = [(0, 3050, "h#"), (3050, 4559, "sh"), (4559, 5723, "ix"), (5723, 6642, "hv"), (6642, 8772, "eh"),
       (8772, 9190, "dcl"), (9190, 10337, "jh"), (10337, 11517, "q"), (11517, 12000, "h#")]  # fmt: skip
WRD = [(3050, 5723, "she"), (5723, 10337, "had"), (9190, 11517, "your")]
TXT = "0 12000 She had your dark suit in greasy wash water all year."


def _samples(seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).integers(-3000, 3000, n).astype(np.int16)


def _write_utt(d: Path, stem: str, seed: int, lower=False, fmt="01", phn=PHN, wrd=WRD, n=N):
    e = (lambda x: x.lower()) if lower else (lambda x: x)
    d.mkdir(parents=True, exist_ok=True)
    write_sphere(d / f"{e(stem)}.{e('WAV')}", _samples(seed, n), byte_format=fmt)
    (d / f"{e(stem)}.{e('PHN')}").write_text("".join(f"{a} {b} {c}\n" for a, b, c in phn))
    (d / f"{e(stem)}.{e('WRD')}").write_text("".join(f"{a} {b} {c}\n" for a, b, c in wrd))
    (d / f"{e(stem)}.{e('TXT')}").write_text(TXT + "\n")


def _tree(root: Path, lower=False, fmt="01"):
    """TRAIN/DR1/FCJF0 (SA1, SI648, SX307), TRAIN/DR2/MTST0 (SX1), TEST/DR1/MDAB0 (core), TEST/DR1/FADG0 (dev),
    TEST/DR3/MZZZ9 (in neither list: a made-up id standing for the 92 unused TEST speakers)."""
    e = (lambda x: x.lower()) if lower else (lambda x: x)
    spec = [("TRAIN/DR1/FCJF0", "SA1"), ("TRAIN/DR1/FCJF0", "SI648"), ("TRAIN/DR1/FCJF0", "SX307"),
            ("TRAIN/DR2/MTST0", "SX1"), ("TEST/DR1/MDAB0", "SI1"), ("TEST/DR1/FADG0", "SX2"), ("TEST/DR3/MZZZ9", "SX3")]  # fmt: skip
    for k, (d, stem) in enumerate(spec):
        _write_utt(root / e(d), stem, seed=k, lower=lower, fmt=fmt)
    return spec


def test_reads_every_field(tmp_path):
    _tree(tmp_path / "TIMIT")
    c = TimitCorpus(tmp_path)  # TRAIN/TEST one level down
    assert c.ids == ["FCJF0_SI648", "FCJF0_SX307", "MTST0_SX1", "FADG0_SX2", "MDAB0_SI1", "MZZZ9_SX3"]  # SA excluded
    assert [c.speaker(i) for i in range(len(c))] == ["FCJF0", "FCJF0", "MTST0", "FADG0", "MDAB0", "MZZZ9"]
    u = c[1]  # SX307 was written with seed 2
    np.testing.assert_array_equal(u.audio, _samples(2).astype(np.float32) / 32768)
    assert u.sample_rate == 16000 and c.num_samples(1) == N
    assert u.text == "She had your dark suit in greasy wash water all year."
    assert u.tiers["phones"] == [Interval(a / 16000, b / 16000, lab) for a, b, lab in PHN]
    # overlapping words kept as written, sorted by start; the gap before "she" stays a pause
    assert u.tiers["words"] == [Interval(a / 16000, b / 16000, lab) for a, b, lab in WRD]
    assert c.entry(1).fields == {"subset": "train", "dialect": "dr1", "speaker": "FCJF0", "sex": "f", "sentence_type": "sx"}
    a = c.annotation(1)
    assert len(a.audio) == 0 and a.tiers == u.tiers  # annotation: no samples decoded


def test_overlap_goes_to_the_later_word_in_frame_labels(tmp_path):
    from src.datamodules.alignment import frame_labels

    _tree(tmp_path)
    words = TimitCorpus(tmp_path).annotation(0).tiers["words"]
    t = np.array([9000, 9500, 11000, 12500]) / 16000  # in "had" only, in the overlap, in "your", after the words
    idx, ok = frame_labels(words, t)
    assert [words[i].label if k else None for i, k in zip(idx, ok)] == ["had", "your", "your", None]


def test_lower_case_tree_and_big_endian_read_the_same(tmp_path):
    _tree(tmp_path / "a")
    _tree(tmp_path / "b" / "timit", lower=True, fmt="10")
    a, b = TimitCorpus(tmp_path / "a"), TimitCorpus(tmp_path / "b")
    assert a.ids == b.ids
    for i in range(len(a)):
        ua, ub = a[i], b[i]
        np.testing.assert_array_equal(ua.audio, ub.audio)
        assert (ua.speaker, ua.text, ua.tiers) == (ub.speaker, ub.text, ub.tiers)
        assert a.entry(i).fields == b.entry(i).fields


def test_kaggle_layout_ignores_converted_copies(tmp_path):
    _tree(tmp_path / "data")
    (tmp_path / "data/TRAIN/DR1/FCJF0/SX307.WAV.wav").write_bytes(b"RIFF....")
    assert len(TimitCorpus(tmp_path)) == 6


def test_sentence_types_and_filters(tmp_path):
    _tree(tmp_path)
    assert "FCJF0_SA1" in TimitCorpus(tmp_path, sentence_types=["sa", "si", "sx"]).ids
    c = TimitCorpus(tmp_path, filters={"dialect": ["dr1"], "sex": "m"})
    assert c.ids == ["MDAB0_SI1"]
    with pytest.raises(CorpusError, match=r"data\.filters\.dialect=\['dr7'\] selects no utterance.*\['dr1', 'dr2', 'dr3'\]"):
        TimitCorpus(tmp_path, filters={"dialect": ["dr7"]})
    with pytest.raises(CorpusError, match=r"data\.filters\.speaker.*'FADG0', 'FCJF0'"):
        TimitCorpus(tmp_path, filters={"speaker": "nobody"})


def test_labels_past_the_audio_name_the_file(tmp_path):
    d = tmp_path / "TRAIN/DR1/FCJF0"
    _write_utt(d, "SX1", 0, phn=PHN[:-1] + [(11517, 12500, "h#")])
    with pytest.raises(CorpusError, match=r"SX1\.PHN: utterance 'FCJF0_SX1' tier 'phones' label 'h#' ends at 0\.7812 s, past"):
        TimitCorpus(tmp_path)
    _write_utt(d, "SX1", 0, wrd=[(3050, 13000, "she")])
    with pytest.raises(CorpusError, match=r"SX1\.WRD.*'she' ends at 0\.8125 s"):
        TimitCorpus(tmp_path)


def test_bad_files_fail_at_construction_naming_the_file(tmp_path):
    d = tmp_path / "TRAIN/DR1/FCJF0"
    _write_utt(d, "SX1", 0)
    write_sphere(d / "SX1.WAV", _samples(0), coding="pcm,embedded-shorten-v2.00")
    with pytest.raises(CorpusError, match=r"SX1\.WAV is compressed.*sph2pipe -f wav"):
        TimitCorpus(tmp_path)
    _write_utt(d, "SX1", 0)
    (d / "SX1.PHN").write_text("0 3050 h#\n3050 x sh\n")
    with pytest.raises(CorpusError, match=r"SX1\.PHN line 2"):
        TimitCorpus(tmp_path)
    (d / "SX1.PHN").unlink()
    with pytest.raises(CorpusError, match=r"no \.PHN file.*SX1\.WAV"):
        TimitCorpus(tmp_path)
    with pytest.raises(CorpusError, match="no TRAIN/ or TEST/"):
        TimitCorpus(d)


def test_timit_core_split(tmp_path):
    _tree(tmp_path)
    c = TimitCorpus(tmp_path)
    s = split_utterances(c, by="timit_core")
    names = {k: [c.ids[i] for i in v] for k, v in s.items()}
    assert names == {"train": ["FCJF0_SI648", "FCJF0_SX307", "MTST0_SX1"], "val": ["FADG0_SX2"], "test": ["MDAB0_SI1"]}
    assert list(group_keys(c, "timit_core")) == [f"spk:{c.speaker(i)}" for i in range(len(c))]
    with pytest.raises(SplitError, match=r"split 'val' is empty.*50 dev speakers"):
        split_utterances(TimitCorpus(tmp_path, filters={"subset": "train"}), by="timit_core")


def test_timit_core_bootstrap_unit_and_sa_warning(tmp_path, caplog):
    from src.probes.pipeline import bootstrap_unit

    _tree(tmp_path)
    _write_utt(tmp_path / "TEST/DR8/MWEW0", "SX9", 9)  # a second core-test speaker
    c = TimitCorpus(tmp_path)
    counts: dict = {}
    test = split_utterances(c, by="timit_core")["test"]
    unit, keys = bootstrap_unit(c, "timit_core", test, counts)
    assert unit == "speaker" and sorted(keys[test]) == ["spk:MDAB0", "spk:MWEW0"] and counts["bootstrap_units_in_test"] == 2
    with caplog.at_level("WARNING"):
        split_utterances(TimitCorpus(tmp_path, sentence_types=["sa", "si", "sx"]), by="timit_core")
    assert "SA sentences" in caplog.text


def test_labels_config_block():
    cfg = {"unicode": "NFC", "drop_silences": True, "silences": ["h#"], "case": "lower", "strip_stress_tiers": ["phones"],
           "phone_map": None, "phone_map_tiers": ["phones"]}  # fmt: skip  (conf/train.yaml's keys)
    assert LabelNormalization.from_config(cfg).phone_map is None
    assert LabelNormalization.from_config({**cfg, "phone_map": "timit39"}).one("ix", "phones") == "ih"


def test_speaker_lists():
    # CORPORA.md §5.5 (lhotse v1.33, Kaldi): 24 core-test and 50 dev speakers, disjoint, 2 per dialect... as listed
    assert len(CORE_TEST_SPEAKERS) == 24 and len(DEV_SPEAKERS) == 50 and not CORE_TEST_SPEAKERS & DEV_SPEAKERS
    assert {"mdab0", "mtas1", "fdhc0", "mwew0"} <= CORE_TEST_SPEAKERS and {"fadg0", "mwjg0", "mrjm4"} <= DEV_SPEAKERS


# ------------------------------------------------------------------------- phone folding

SET48 = set("aa ae ah ao aw ax ay b ch cl d dh dx eh el en epi er ey f g hh ih ix iy jh k l m n ng ow oy p r s sh "
            "sil t th uh uw v vcl w y z zh".split())  # fmt: skip  (CORPORA.md §5.4)
SET39 = set("aa ae ah aw ay b ch d dh dx eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh sil t th uh uw v w y "
            "z".split())  # fmt: skip
TIMIT61 = set("aa ae ah ao aw ax ax-h axr ay b bcl ch d dcl dh dx eh el em en eng epi er ey f g gcl h# hh hv ih ix "
              "iy jh k kcl l m n ng nx ow oy p pau pcl q r s sh t tcl th uh uw ux v w y z zh".split())  # fmt: skip


def test_phone_map_counts():
    assert len(TIMIT61) == 61
    m48, m39 = phone_map("timit48"), phone_map("timit39")
    assert TIMIT61 <= set(m48) and TIMIT61 <= set(m39)
    assert {m48[p] for p in TIMIT61} - {None} == SET48 and len(SET48) == 48
    assert {m39[p] for p in TIMIT61} - {None} == SET39 and len(SET39) == 39
    assert m48["q"] is None and m39["q"] is None
    # 48 -> 39 is a function of the 48 label (the 61 -> 39 map factors through the 48 set)
    assert all(m39[p] == m39[m48[p]] for p in TIMIT61 - {"q"})
    assert all(m48[m48[p]] == m48[p] and m39[m39[p]] == m39[p] for p in TIMIT61 - {"q"})  # idempotent


@pytest.mark.parametrize(
    "p61, p48, p39",
    [("ao", "ao", "aa"), ("ax-h", "ax", "ah"), ("axr", "er", "er"), ("bcl", "vcl", "sil"), ("kcl", "cl", "sil"),
     ("el", "el", "l"), ("em", "m", "m"), ("en", "en", "n"), ("eng", "ng", "ng"), ("hv", "hh", "hh"),
     ("ix", "ix", "ih"), ("nx", "n", "n"), ("ux", "uw", "uw"), ("zh", "zh", "sh"), ("h#", "sil", "sil"),
     ("pau", "sil", "sil"), ("epi", "epi", "sil"), ("dx", "dx", "dx")],
)  # fmt: skip
def test_hand_checked_foldings(p61, p48, p39):
    assert phone_map("timit48")[p61] == p48 and phone_map("timit39")[p61] == p39
    keep = LabelNormalization(phone_map="timit39", drop_silences=False)
    assert keep.one(p61.upper(), "phones") == p39  # case-insensitive lookup


def test_label_normalisation_with_the_map():
    keep39 = LabelNormalization(phone_map="timit39", drop_silences=False)
    assert {keep39.one(p, "phones") for p in TIMIT61} - {None} == SET39
    drop39 = LabelNormalization(phone_map="timit39")  # the 39-set's sil (pauses, epi, closures) is a silence
    assert {drop39.one(p, "phones") for p in TIMIT61} - {None} == SET39 - {"sil"}
    drop48 = LabelNormalization(phone_map="timit48")
    assert drop48.one("h#", "phones") is None and drop48.one("bcl", "phones") == "vcl"
    assert drop48.one("epi", "phones") == "epi"
    assert drop39.one("ao", "words") == "ao"  # other tiers untouched
    counts: dict = {}
    out = drop39.apply(["h#", "sh", "q", "ix", "bcl", "q"], "phones", counts)
    assert out == [None, "sh", None, "ih", None, None]
    assert counts == {"labels_phones_phone_deleted": 2, "labels_phones_silence_dropped": 2, "labels_phones_changed": 1}
    with pytest.raises(LabelError, match=r"phone_map=timit39: label 'xyz' on tier 'phones' is not a TIMIT phone"):
        drop39.one("xyz", "phones")
    with pytest.raises(LabelError, match="labels.phone_map must be"):
        LabelNormalization(phone_map="timit40")
    assert LabelNormalization.from_config({"phone_map": "timit48"}).phone_map == "timit48"


def test_writer_round_trip(tmp_path):
    """write_timit (used by the cross-format tests) writes what the reader reads back."""
    sr = 16000
    utts = []
    for k, spk in enumerate(["b", "a", "b"]):
        audio = _samples(k, 8000).astype(np.float32) / 32768
        tiers = {"phones": [Interval(0.0, 0.2, "s"), Interval(0.2, 0.5, "a")], "words": [Interval(0.0, 0.5, "sa")]}
        utts.append(Utterance(f"{spk}_{k}", audio, sr, speaker=spk, text="Sa.", tiers=tiers))
    ids = write_timit(utts, tmp_path)
    assert ids == [("b_0", "B_SX1001"), ("a_1", "A_SX1001"), ("b_2", "B_SX1002")]
    c = TimitCorpus(tmp_path)
    assert c.ids == ["A_SX1001", "B_SX1001", "B_SX1002"]
    back = {c.ids[i]: c[i] for i in range(len(c))}
    for u, (_, tid) in zip(utts, ids):
        r = back[tid]
        np.testing.assert_array_equal(r.audio, u.audio)
        assert (r.text, r.tiers, r.speaker) == (u.text, u.tiers, u.speaker.upper())
