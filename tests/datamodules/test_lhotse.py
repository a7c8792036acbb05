"""data=lhotse on manifests in lhotse's serialised form (CORPORA.md section 8): literal JSON lines as
lhotse 1.33 writes them (alignment items as [symbol, start, duration, score] lists, and the pre-1.8 dict
form), manifests written by lhotse itself (sets and cuts), a sub-segment supervision; bad input."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.corpus import CorpusError, Interval
from tests.conftest import ROOT
from tests.corpus_writers import grid_utterances
from tests.corpus_writers.lhotse import write_lhotse

pytest.importorskip("lhotse")


def test_module_import_does_not_import_torch():
    code = "import sys, src.datamodules.lhotse_corpus, src.datamodules.hf_corpus; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture
def literal(tmp_path):
    """A TIMIT-recipe-like pair of manifests written as literal JSON lines."""
    rng = np.random.default_rng(3)
    wav = tmp_path / "FCJF0-SA1.wav"
    sf.write(wav, (rng.standard_normal(16000) * 1000).astype(np.int16), 16000, subtype="PCM_16")
    rec = {"id": "FCJF0-SA1", "sources": [{"type": "file", "channels": [0], "source": str(wav)}], "sampling_rate": 16000,
           "num_samples": 16000, "duration": 1.0, "channel_ids": [0]}  # fmt: skip
    sup = {"id": "FCJF0-SA1", "recording_id": "FCJF0-SA1", "start": 0.0, "duration": 1.0, "channel": 0,
           "text": "she had your", "language": "English", "speaker": "FCJF0", "gender": "female",
           "custom": {"dialect": "DR1"},
           "alignment": {"word": [["she", 0.1, 0.2, None], ["", 0.3, 0.05, None], ["had", 0.35, 0.25, None],
                                  {"symbol": "your", "start": 0.6, "duration": 0.3}],
                         "phone": [["sh", 0.1, 0.12, None], ["iy", 0.22, 0.08, 0.9], ["h#", 0.9, 0.1, None]]}}  # fmt: skip
    for name, obj in (("recordings", rec), ("supervisions", sup)):
        with gzip.open(tmp_path / f"timit_{name}_TRAIN.jsonl.gz", "wt") as f:
            f.write(json.dumps(obj) + "\n")
    return tmp_path


def test_literal_manifests_every_field(literal):
    from src.datamodules.lhotse_corpus import LhotseCorpus

    c = LhotseCorpus(manifest_dir=literal, part="TRAIN")
    assert c.ids == ["FCJF0-SA1"] and c.num_samples(0) == 16000
    u = c[0]
    assert (u.speaker, u.text, u.sample_rate) == ("FCJF0", "she had your", 16000)
    assert u.tiers == {
        "words": [Interval(0.1, 0.3, "she"), Interval(0.35, 0.6, "had"), Interval(0.6, 0.9, "your")],
        "phones": [Interval(0.1, 0.22, "sh"), Interval(0.22, 0.3, "iy"), Interval(0.9, 1.0, "h#")],
    }
    np.testing.assert_array_equal(u.audio, sf.read(literal / "FCJF0-SA1.wav", dtype="float32")[0])
    assert c.entry(0).fields == {"speaker": "FCJF0", "recording": "FCJF0-SA1", "language": "English", "gender": "female",
                                 "dialect": "DR1"}  # fmt: skip
    with pytest.raises(CorpusError, match=r"filters.dialect=\['DR7'\] selects no utterance; the values present are \['DR1'\]"):
        LhotseCorpus(manifest_dir=literal, part="TRAIN", filters={"dialect": "DR7"})
    with pytest.raises(CorpusError, match=r"no \*recordings_DEV.jsonl\[.gz\] manifest; it holds \['timit_recordings_TRAIN.jsonl.gz', 'timit_supervisions_TRAIN.jsonl.gz'\]"):
        LhotseCorpus(manifest_dir=literal, part="DEV")


def test_label_past_audio(literal):
    from src.datamodules.lhotse_corpus import LhotseCorpus

    p = literal / "timit_supervisions_TRAIN.jsonl.gz"
    sup = json.loads(gzip.open(p, "rt").read())
    sup["alignment"]["phone"].append(["sil", 1.0, 0.5, None])
    with gzip.open(p, "wt") as f:
        f.write(json.dumps(sup) + "\n")
    with pytest.raises(CorpusError, match=r"supervision FCJF0-SA1\): utterance 'FCJF0-SA1' tier 'phones' label 'sil' ends at 1.5000 s, past the end of its audio \(1.0000 s"):
        LhotseCorpus(manifest_dir=literal, part="TRAIN")


@pytest.mark.parametrize("kind", ["sets", "cuts"])
def test_written_by_lhotse_round_trip(tmp_path, kind):
    from src.datamodules.lhotse_corpus import LhotseCorpus

    utts = grid_utterances(4)
    paths = write_lhotse(tmp_path, utts, kind=kind)
    c = LhotseCorpus(**{k: str(v) for k, v in paths.items()})
    assert c.ids == [u.id for u in utts]
    for k, u in enumerate(utts):
        got = c[k]
        assert got.tiers == u.tiers and got.speaker == u.speaker and got.text == u.text
        np.testing.assert_array_equal(got.audio, u.audio)


def test_sub_segment_supervision(tmp_path):
    """A supervision from 0.5 s: audio sliced, tiers moved to the segment start (items are recording-relative)."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.supervision import AlignmentItem

    from src.datamodules.lhotse_corpus import LhotseCorpus

    x = (np.arange(32000) % 200 - 100).astype(np.int16)
    sf.write(tmp_path / "r.wav", x, 16000, subtype="PCM_16")
    rec = Recording.from_file(tmp_path / "r.wav", recording_id="r")
    sup = SupervisionSegment(id="r-1", recording_id="r", start=0.5, duration=1.0, speaker="s",
                             alignment={"word": [AlignmentItem("ab", 0.6, 0.4)]})  # fmt: skip
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "rec.jsonl.gz")
    SupervisionSet.from_segments([sup]).to_file(tmp_path / "sup.jsonl.gz")
    c = LhotseCorpus(recordings=tmp_path / "rec.jsonl.gz", supervisions=tmp_path / "sup.jsonl.gz")
    u = c[0]
    assert u.tiers["words"] == [Interval(0.1, 0.5, "ab")] and c.num_samples(0) == 16000
    np.testing.assert_array_equal(u.audio, x[8000:24000] / np.float32(32768))
    c2 = LhotseCorpus(recordings=tmp_path / "rec.jsonl.gz", supervisions=tmp_path / "sup.jsonl.gz", alignment_times="supervision")
    assert c2.annotation(0).tiers["words"] == [Interval(0.6, 1.0, "ab")]
