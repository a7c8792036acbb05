"""data=librispeech on files in the real layouts (CORPORA.md section 7): CorentinJ's condensed line verbatim,
MFA TextGrids written by hand in the long and short Praat formats, FLAC audio; every field compared with
literal values; writer round trip; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.librispeech import LibriSpeechCorpus, read_condensed
from tests.corpus_writers import grid_utterances
from tests.corpus_writers.librispeech import write_librispeech

LINE = '84-121123-0000 ",GO,,DO,YOU,HEAR," "0.490,0.890,1.270,1.380,1.490,1.890,2.09"\n'

LONG_TG = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2.09
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 2.09
        intervals: size = 4
        intervals [1]:
            xmin = 0.0
            xmax = 0.49
            text = ""
        intervals [2]:
            xmin = 0.49
            xmax = 0.89
            text = "go"
        intervals [3]:
            xmin = 0.89
            xmax = 1.27
            text = "<unk>"
        intervals [4]:
            xmin = 1.27
            xmax = 2.09
            text = ""
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 2.09
        intervals: size = 5
        intervals [1]:
            xmin = 0
            xmax = 0.49
            text = "sil"
        intervals [2]:
            xmin = 0.49
            xmax = 0.6
            text = "G"
        intervals [3]:
            xmin = 0.6
            xmax = 0.89
            text = "OW1"
        intervals [4]:
            xmin = 0.89
            xmax = 1.27
            text = "spn"
        intervals [5]:
            xmin = 1.27
            xmax = 2.09
            text = ""
'''

SHORT_TG = '''File type = "ooTextFile"
Object class = "TextGrid"

0
2.09
<exists>
2
"IntervalTier"
"84 - words"
0
2.09
2
0
0.49
""
0.49
2.09
"ABOUT"
"IntervalTier"
"84 - phones"
0
2.09
3
0
0.49
"sil"
0.49
0.6
"AH0"
0.6
2.09
"B AW1 T"
'''


@pytest.fixture
def libri(tmp_path):
    d = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for k in range(2):
        sf.write(d / f"84-121123-000{k}.flac", (rng.standard_normal(int(2.09 * 16000)) * 2000).astype(np.int16), 16000,
                 subtype="PCM_16", format="FLAC")  # fmt: skip
    (d / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 ABOUT\n")
    (d / "84-121123.alignment.txt").write_text(LINE)  # 0001 has no line (as 127 real utterances)
    tg = tmp_path / "mfa" / "84"
    tg.mkdir(parents=True)
    (tg / "84-121123-0000.TextGrid").write_text(LONG_TG)
    (tg / "84-121123-0001.TextGrid").write_text(SHORT_TG)
    return tmp_path


def test_condensed_line_verbatim(libri):
    got = read_condensed(libri / "LibriSpeech/dev-clean/84/121123/84-121123.alignment.txt")
    assert got == {"84-121123-0000": [Interval(0.49, 0.89, "GO"), Interval(1.27, 1.38, "DO"), Interval(1.38, 1.49, "YOU"),
                                      Interval(1.49, 1.89, "HEAR")]}  # fmt: skip
    c = LibriSpeechCorpus(libri / "LibriSpeech")  # auto: condensed beside the transcripts
    assert c.alignments == "condensed" and c.ids == ["84-121123-0000"] and c.missing == ["84-121123-0001"]
    u = c[0]
    assert (u.speaker, u.text, u.sample_rate, len(u.audio)) == ("84", "GO DO YOU HEAR", 16000, 33440)
    ref = sf.read(libri / "LibriSpeech/dev-clean/84/121123/84-121123-0000.flac", dtype="float32")[0]
    np.testing.assert_array_equal(u.audio, ref)
    assert c.entry(0).fields == {"subset": "dev-clean", "speaker": "84", "chapter": "121123"}
    with pytest.raises(CorpusError, match=r"1 utterances have no alignment .*84-121123-0001"):
        LibriSpeechCorpus(libri / "LibriSpeech", missing_alignment="error")


def test_mfa_textgrids_long_and_short(libri):
    c = LibriSpeechCorpus(libri / "LibriSpeech", alignments_root=libri / "mfa")
    assert c.alignments == "textgrid" and c.ids == ["84-121123-0000", "84-121123-0001"]
    a, b = c.annotation(0), c.annotation(1)
    assert a.tiers["words"] == [Interval(0.49, 0.89, "go"), Interval(0.89, 1.27, "<unk>")]
    assert a.tiers["phones"] == [Interval(0.0, 0.49, "sil"), Interval(0.49, 0.6, "G"), Interval(0.6, 0.89, "OW1"),
                                 Interval(0.89, 1.27, "spn")]  # fmt: skip
    assert b.tiers == {"words": [Interval(0.49, 2.09, "ABOUT")],
                       "phones": [Interval(0.0, 0.49, "sil"), Interval(0.49, 0.6, "AH0"), Interval(0.6, 2.09, "B AW1 T")]}  # fmt: skip
    assert b.text == "ABOUT" and b.speaker == "84"


def test_writer_round_trip(tmp_path):
    utts = grid_utterances(4)
    ids = write_librispeech(tmp_path / "LS", utts, subset="test-clean", textgrid_root=tmp_path / "tg")
    for kind, kw in (("condensed", {}), ("textgrid", {"alignments_root": tmp_path / "tg"})):
        c = LibriSpeechCorpus(tmp_path / "LS", **kw)
        assert c.alignments == kind
        assert c.ids == [ids[u.id] for u in utts] == ["84-121123-0000", "84-121123-0001", "85-121123-0000", "85-121123-0001"]
        for k, u in enumerate(utts):
            got = c[k]
            assert [(w.start, w.end, w.label.lower()) for w in got.tiers["words"]] == [(w.start, w.end, w.label) for w in u.tiers["words"]]
            if kind == "textgrid":
                assert [iv for iv in got.tiers["phones"] if iv.label != "sil"] == u.tiers["phones"]
            assert got.text == u.text.upper()
            np.testing.assert_array_equal(got.audio, u.audio)


def test_bad_input(libri, tmp_path):
    with pytest.raises(CorpusError, match=r"data.subsets=\['train-clean-100'\] selects no utterance .*present are \['dev-clean'\]"):
        LibriSpeechCorpus(libri / "LibriSpeech", subsets=["train-clean-100"])
    with pytest.raises(CorpusError, match=r"filters.speaker=\['19'\] selects no utterance; the values present are \['84'\]"):
        LibriSpeechCorpus(libri / "LibriSpeech", filters={"speaker": 19})
    p = libri / "LibriSpeech/dev-clean/84/121123/84-121123.alignment.txt"
    p.write_text(LINE.replace("2.09", "3.50"))  # the audio lasts 2.09 s
    assert len(LibriSpeechCorpus(libri / "LibriSpeech")) == 1  # the trailing silence is dropped; HEAR ends at 1.89
    p.write_text(LINE.replace("1.890,2.09", "3.890,4.00"))
    with pytest.raises(CorpusError, match=r"84-121123.alignment.txt: utterance '84-121123-0000' tier 'words' label 'HEAR' ends at 3.8900 s, past the end of its audio \(2.0900 s"):
        LibriSpeechCorpus(libri / "LibriSpeech")
    p.write_text(LINE.replace('"0.490,', '"'))
    with pytest.raises(CorpusError, match=r"alignment.txt:1: utterance 84-121123-0000: 7 words but 6 end times"):
        LibriSpeechCorpus(libri / "LibriSpeech")
