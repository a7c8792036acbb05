"""One label normalisation (src/datamodules/labels.py) used by tasks and analyses alike."""

from __future__ import annotations

import logging
import unicodedata

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.corpus import Interval, TextGridCorpus, write_textgrid
from src.datamodules.labels import LabelError, LabelNormalization, case_collisions

E_NFC = unicodedata.normalize("NFC", "e\u0301")  # é as one code point
E_NFD = unicodedata.normalize("NFD", "e\u0301")  # e + combining acute


def test_one_label_at_a_time():
    n = LabelNormalization()
    assert n.one(" AH0 ", "phones") == "ah"
    assert n.one("AH0", "words") == "ah0"  # stress digits only on the listed tiers
    assert n.one("sil", "phones") is None and n.one("SP", "phones") is None and n.one("", "phones") is None
    assert n.one("spn", "phones") is None and n.one("<sil>", "words") is None
    assert n.one(E_NFD, "phones") == n.one(E_NFC, "phones") == E_NFC
    assert n.one("2", "phones") == "2"  # a bare number is not a stress digit
    keep = LabelNormalization(case="keep", drop_silences=False, strip_stress_tiers=[])
    assert keep.one("AH0", "phones") == "AH0" and keep.one("sil", "phones") == "sil"
    with pytest.raises(LabelError, match="labels.case"):
        LabelNormalization(case="title")
    with pytest.raises(LabelError, match="unknown keys"):
        LabelNormalization.from_config({"cse": "lower"})


def test_counts_of_what_changed():
    counts: dict = {}
    out = LabelNormalization().apply(["AA1", "aa", "sil", "b", ""], "phones", counts)
    assert out == ["aa", "aa", None, "b", None]
    assert counts == {"labels_phones_silence_dropped": 2, "labels_phones_changed": 1}
    assert case_collisions(["AA", "aa", "b"]) == {"aa": ["AA", "aa"]}


@pytest.fixture()
def mfa_corpus(tmp_path):
    """One utterance with MFA-style labels: upper-case ARPAbet with stress, sil/sp/spn, NFD IPA."""
    root = tmp_path / "c" / "spk"
    root.mkdir(parents=True)
    sf.write(root / "u1.wav", np.zeros(16000, np.float32), 16000)
    phones = [Interval(0.0, 0.1, "sil"), Interval(0.1, 0.3, "AH0"), Interval(0.3, 0.5, "ah1"),
              Interval(0.5, 0.6, "sp"), Interval(0.6, 0.8, E_NFD), Interval(0.8, 0.9, E_NFC), Interval(0.9, 1.0, "spn")]  # fmt: skip
    words = [Interval(0.1, 0.5, "UH"), Interval(0.6, 0.9, "Été")]
    write_textgrid(root / "u1.TextGrid", {"phones": phones, "words": words}, 1.0)
    return TextGridCorpus(tmp_path / "c")


class _Acts:
    def __init__(self, corpus):
        self.ids = corpus.ids
        self.offsets = np.array([0])
        self.frame_rate = 50.0

    def frame_times(self, u):
        return np.arange(50) / 50.0


def test_tasks_and_analyses_see_one_phone_set(mfa_corpus):
    """Frame task (train.py) and phone tokens (analyze.py) have the same classes: no sil/sp/spn,
    case and stress folded, NFC and NFD one class."""
    from src.analyses.base import phone_tokens
    from src.datamodules.tasks import FrameClassification, SegmentClassification

    acts = _Acts(mfa_corpus)
    frames = FrameClassification(min_count=1).build(acts, mfa_corpus)
    tokens = SegmentClassification(min_count=1).build(acts, mfa_corpus)
    analysis = phone_tokens(acts, mfa_corpus)
    assert frames.classes == tokens.classes == ["ah", E_NFC]
    assert sorted(set(analysis.labels.tolist())) == ["ah", E_NFC]
    assert frames.counts["frames_silence"] == 5 + 5 + 5  # 0-0.1, 0.5-0.6, 0.9-1.0 at 50 Hz
    assert frames.counts["labels_phones_silence_dropped"] == 3
    assert len(tokens.y) == 4
    # contexts of phone tokens see a dropped silence as a boundary
    assert tokens.extra["context"].tolist() == ["#_ah", "ah_#", f"#_{E_NFC}", f"{E_NFC}_#"]


def test_case_keep_warns_about_labels_differing_only_in_case(mfa_corpus, caplog):
    from src.datamodules.tasks import FrameClassification

    mfa_corpus.label_norm = LabelNormalization(case="keep", strip_stress_tiers=[])
    with caplog.at_level(logging.WARNING):
        data = FrameClassification(min_count=1).build(_Acts(mfa_corpus), mfa_corpus)
    assert "AH0" in data.classes and "ah1" in data.classes
    assert "differ only in case" not in caplog.text  # AH0 vs ah1 differ in more than case
    mfa_corpus.label_norm = LabelNormalization(case="keep", strip_stress_tiers=["phones"])
    with caplog.at_level(logging.WARNING):
        data = FrameClassification(min_count=1).build(_Acts(mfa_corpus), mfa_corpus)
    assert data.classes == ["AH", "ah", E_NFC]
    assert "differ only in case" in caplog.text and data.counts["labels_phones_differ_only_in_case"] == 1


def test_stress_secondary_mapping(tmp_path):
    from src.datamodules.corpus import CorpusError
    from src.datamodules.tasks import StressClassification

    root = tmp_path / "s" / "spk"
    root.mkdir(parents=True)
    sf.write(root / "u1.wav", np.zeros(16000, np.float32), 16000)
    phones = [Interval(0.0, 0.2, "K"), Interval(0.2, 0.4, "AE1"), Interval(0.4, 0.6, "T"), Interval(0.6, 0.8, "IH2"),
              Interval(0.8, 1.0, "AH0")]  # fmt: skip
    syl = [Interval(0.0, 0.4, "1"), Interval(0.4, 0.8, "2"), Interval(0.8, 1.0, "0")]
    write_textgrid(root / "u1.TextGrid", {"phones": phones, "syllables": syl}, 1.0)
    corpus = TextGridCorpus(tmp_path / "s")
    acts = _Acts(corpus)
    d = StressClassification().build(acts, corpus)  # default: 2 -> 1 (stressed)
    assert [d.classes[i] for i in d.y] == ["1", "1", "0"] and d.counts["syllables_secondary_stress"] == 1
    assert d.extra["vowel"].tolist() == ["ae", "ih", "ah"]  # normalised vowel identity for the baseline
    d = StressClassification(secondary="drop").build(acts, corpus)
    assert [d.classes[i] for i in d.y] == ["1", "0"]
    with pytest.raises(CorpusError, match="secondary stress '2'.*task.secondary"):
        StressClassification(secondary="error").build(acts, corpus)
