"""data=hf on datasets in the two common alignment layouts (CORPORA.md section 9): timit_asr (column-wise
sample indices), gilkeyio/librispeech-alignments (row-wise seconds) and french_homophone_asr ({"intervals"}
wrapper), saved with save_to_disk with a decoding Audio feature; literal values; bad input."""

from __future__ import annotations

import numpy as np
import pytest

from src.datamodules.corpus import CorpusError, Interval
from tests.corpus_writers import grid_utterances
from tests.corpus_writers.hf import write_hf

datasets = pytest.importorskip("datasets")


def _literal_timit(tmp_path):
    """Two rows of the timit_asr schema: the same id SA1 for two speakers, sample-index details."""
    from src.datamodules.corpus import Utterance

    rng = np.random.default_rng(5)
    utts = []
    for spk in ("FCJF0", "MDAB0"):
        audio = (np.round(rng.standard_normal(9600) * 1000) / 32768).astype(np.float32)
        utts.append(Utterance(id="SA1", audio=audio, sample_rate=16000, speaker=spk, text="She had your dark suit.",
                              tiers={"phones": [Interval(0.0, 3050 / 16000, "h#"), Interval(3050 / 16000, 4559 / 16000, "sh"),
                                                Interval(4559 / 16000, 5723 / 16000, "iy")],
                                     "words": [Interval(3050 / 16000, 5723 / 16000, "she")]}))  # fmt: skip
    write_hf(tmp_path / "timit", utts, "timit", split="train")
    return tmp_path / "timit", utts


def test_timit_asr_layout_literal(tmp_path):
    from src.datamodules.hf_corpus import HFCorpus

    path, utts = _literal_timit(tmp_path)
    raw = datasets.load_from_disk(str(path))["train"].select_columns(["phonetic_detail"])[0]["phonetic_detail"]
    assert raw == {"start": [0, 3050, 4559], "stop": [3050, 4559, 5723], "utterance": ["h#", "sh", "iy"]}  # column-wise
    c = HFCorpus(path, split="train")
    assert c.ids == ["FCJF0-SA1", "MDAB0-SA1"]  # SA1 repeats: <speaker>-<id>
    u = c[1]
    assert (u.speaker, u.text, u.sample_rate, len(u.audio)) == ("MDAB0", "She had your dark suit.", 16000, 9600)
    assert u.tiers == {"words": [Interval(0.190625, 0.3576875, "she")],
                       "phones": [Interval(0.0, 0.190625, "h#"), Interval(0.190625, 0.2849375, "sh"),
                                  Interval(0.2849375, 0.3576875, "iy")]}  # fmt: skip
    np.testing.assert_array_equal(u.audio, utts[1].audio)
    assert c.entry(0).fields["dialect_region"] == "DR1" and c.entry(0).fields["sentence_type"] == "SX"
    with pytest.raises(CorpusError, match=r"filters.sentence_type=\['SA'\] selects no utterance; the values present are \['SX'\]"):
        HFCorpus(path, split="train", filters={"sentence_type": "SA"})
    with pytest.raises(CorpusError, match=r"data.columns.phones='phonemes' is not a column; it has the columns \['file', 'audio', 'text', 'phonetic_detail', 'word_detail', 'dialect_region', 'sentence_type', 'speaker_id', 'id'\]"):
        HFCorpus(path, split="train", columns={"phones": "phonemes"})
    with pytest.raises(CorpusError, match=r"has no split 'test'; it has \['train'\]"):
        HFCorpus(path, split="test")


def test_row_wise_seconds_and_wrapped(tmp_path):
    from src.datamodules.hf_corpus import HFCorpus

    utts = grid_utterances(4)
    write_hf(tmp_path / "ls", utts, "librispeech", split="dev_clean")
    c = HFCorpus(tmp_path / "ls", split="dev_clean")
    assert c.roles == {"audio": "audio", "text": "transcript", "speaker": "speaker", "id": "id", "words": "words", "phones": "phonemes"}
    assert c.ids == [u.id for u in utts]
    for k, u in enumerate(utts):
        got = c[k]
        assert got.tiers == u.tiers and (got.speaker, got.text) == (u.speaker, u.text)
        np.testing.assert_array_equal(got.audio, u.audio)
    # french_homophone_asr: {"intervals": [{"word", "start", "end"}]} in an "alignment" column, no speaker
    ds = datasets.Dataset.from_dict({
        "audio": [{"array": np.zeros(16000, np.float32), "sampling_rate": 16000}],
        "transcription": ["On y trouve un aéroport."],
        "alignment": [{"intervals": [{"word": "On", "start": 0.1, "end": 0.2}, {"word": "", "start": 0.2, "end": 0.3},
                                     {"word": "aéroport", "start": 0.4, "end": 0.9}]}],
    })  # fmt: skip
    ds.save_to_disk(str(tmp_path / "fr"))
    f = HFCorpus(tmp_path / "fr", units={"words": "seconds"})
    assert f.ids == ["000000"] and f.annotation(0).tiers == {"words": [Interval(0.1, 0.2, "On"), Interval(0.4, 0.9, "aéroport")]}
    assert f[0].text == "On y trouve un aéroport." and f.speaker(0) == ""


def test_timit_layout_round_trip_and_times_past_audio(tmp_path):
    from src.datamodules.hf_corpus import HFCorpus

    utts = grid_utterances(3)
    write_hf(tmp_path / "t", utts, "timit")
    c = HFCorpus(tmp_path / "t")
    for k, u in enumerate(utts):
        assert c.annotation(k).tiers == u.tiers
    long = [u for u in grid_utterances(1)]
    long[0].tiers["phones"].append(Interval(5.0, 5.5, "a"))  # audio lasts < 1 s
    write_hf(tmp_path / "bad", long, "timit")
    with pytest.raises(CorpusError, match=r"row 0: utterance 'spk1_000' tier 'phones' label 'a' ends at 5.5000 s, past the end of its audio"):
        HFCorpus(tmp_path / "bad")
    with pytest.raises(CorpusError, match=r"does not exist \(and '/nope/x' is not a hub id\)"):
        HFCorpus("/nope/x")
