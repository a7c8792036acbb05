"""data=buckeye on files in the real layout (CORPORA.md section 6: the scjs fixtures verbatim plus the
listed defects), every field compared with literal values; round trip of the writer; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from src.datamodules.buckeye import BuckeyeCorpus, read_esps
from src.datamodules.corpus import CorpusError, Interval
from tests.corpus_writers import grid_utterances
from tests.corpus_writers.buckeye import write_buckeye

HEADER = "signal s9901a\ntype 0\ncolor 121\ncomment created using xlabel Wed Jan 23 18:44:24 2002\nfont -misc-*-bold-*-*-*-15-*-*-*-*-*-*-*\nseparator ;\nnfields 4\n#\n"
WORDS = HEADER + (
    "    0.05  122 {B_TRANS}\n"
    "    0.15  121 the; dh iy; dh ah; DT\n"
    "    0.44  121 cat; k ae t; k ae t; NN\n"
    "    0.90  122 <SIL>\n"
    "    1.12  121 sat; s ae t; s ae; VBD\n"
    "    1.10  121 <VOCNOISE>\n"  # time going backwards (s2801a): dropped
    "    1.30  122 <CUTOFF-s=sat>; U\n"  # a 2-field entry
    "    1.50  121 um; ah m; UH\n"  # a 3-field entry
)
PHONES = HEADER + (
    "    0.05  122 SIL\n"
    "    0.10  121 dh\n"
    "    0.15  121 ah\n"
    "    0.25  121 k\n"
    "    0.35  121 ae+1\n"
    "    0.44  121 t;\n"
    "    0.90  122 SIL\n"
    "    1.00  121 s\n"
    "    1.12  121 ae\n"
    "    1.30  122 VOCNOISE\n"
    "    1.40  121 ah\n"
    "    1.50  121 m\n"
)


@pytest.fixture
def buckeye_root(tmp_path):
    d = tmp_path / "buckeye" / "s99" / "s9901a"
    d.mkdir(parents=True)
    (d / "s9901a.words").write_text(WORDS)
    (d / "s9901a.phones").write_text(PHONES)
    (d / "s9901a.log").write_text(HEADER + "    1.50  121 <VOICE=modal>\n")
    (d / "s9901a.txt").write_text("the cat sat um\n")
    rng = np.random.default_rng(0)
    sf.write(d / "s9901a.wav", (rng.standard_normal(16000 * 16 // 10) * 3000).astype(np.int16), 16000, subtype="PCM_16")
    return tmp_path / "buckeye"


def test_read_esps_header_end_times_and_defects(buckeye_root):
    rep: dict = {}
    ents = read_esps(buckeye_root / "s99/s9901a/s9901a.words", rep)
    assert ents == [
        (0.0, 0.05, "{B_TRANS}"), (0.05, 0.15, "the; dh iy; dh ah; DT"), (0.15, 0.44, "cat; k ae t; k ae t; NN"),
        (0.44, 0.90, "<SIL>"), (0.90, 1.12, "sat; s ae t; s ae; VBD"), (1.12, 1.30, "<CUTOFF-s=sat>; U"),
        (1.30, 1.50, "um; ah m; UH"),
    ]  # fmt: skip
    assert rep == {"entries_not_after_previous_dropped": 1}


def test_track_tiers_every_field(buckeye_root):
    c = BuckeyeCorpus(buckeye_root, utterances="track")
    assert c.ids == ["s9901a"] and c.speaker(0) == "s99" and c.num_samples(0) == 25600
    u = c[0]
    assert u.text == "the cat sat um" and u.speaker == "s99" and u.sample_rate == 16000
    ref = sf.read(buckeye_root / "s99/s9901a/s9901a.wav", dtype="float32")[0]
    np.testing.assert_array_equal(u.audio, ref)
    assert u.tiers["words"] == [Interval(0.05, 0.15, "the"), Interval(0.15, 0.44, "cat"), Interval(0.90, 1.12, "sat"),
                                Interval(1.30, 1.50, "um")]  # fmt: skip
    assert [iv.label for iv in u.tiers["citation"]] == ["dh iy", "k ae t", "s ae t", "ah m"]
    assert [iv.label for iv in u.tiers["close"]] == ["dh ah", "k ae t", "s ae"]  # "um" has no close field
    assert u.tiers["phones"] == [
        Interval(0.05, 0.10, "dh"), Interval(0.10, 0.15, "ah"), Interval(0.15, 0.25, "k"), Interval(0.25, 0.35, "ae"),
        Interval(0.35, 0.44, "t"), Interval(0.90, 1.00, "s"), Interval(1.00, 1.12, "ae"), Interval(1.30, 1.40, "ah"),
        Interval(1.40, 1.50, "m"),
    ]  # fmt: skip
    noisy = BuckeyeCorpus(buckeye_root, utterances="track", keep_noise=True, word_label="citation").annotation(0)
    assert [iv.label for iv in noisy.tiers["phones"]][:3] == ["SIL", "dh", "ah"]
    assert "VOCNOISE" in [iv.label for iv in noisy.tiers["phones"]]
    assert [iv.label for iv in noisy.tiers["words"]] == ["dh iy", "k ae t", "s ae t", "ah m"]
    assert noisy.text == "the cat sat um"


def test_pause_stretches(buckeye_root):
    c = BuckeyeCorpus(buckeye_root)  # utterances=pauses, min_pause 0: every pause/noise entry ends a stretch
    assert c.ids == ["s9901a_0000", "s9901a_0001", "s9901a_0002"]
    a, b, d = (c.annotation(i) for i in range(3))
    assert [(iv.start, iv.end, iv.label) for iv in a.tiers["words"]] == [(0.0, 0.1, "the"), (0.1, 0.39, "cat")]
    assert a.text == "the cat" and b.text == "sat" and d.text == "um"
    assert c.num_samples(0) == round(0.44 * 16000) - round(0.05 * 16000)
    assert [iv.label for iv in b.tiers["phones"]] == ["s", "ae"]
    u = c[1]
    ref = sf.read(buckeye_root / "s99/s9901a/s9901a.wav", dtype="float32")[0]
    np.testing.assert_array_equal(u.audio, ref[round(0.90 * 16000) : round(1.12 * 16000)])
    joined = BuckeyeCorpus(buckeye_root, min_pause=0.3)  # only the 0.46 s <SIL> cuts
    assert [joined.annotation(i).text for i in range(len(joined))] == ["the cat", "sat um"]
    short = BuckeyeCorpus(buckeye_root, min_pause=10.0, max_duration=0.65)  # the 0.39 s + 0.6 s stretches
    assert [short.annotation(i).text for i in range(len(short))] == ["the cat", "sat um"]


def test_writer_round_trip_and_filters(tmp_path):
    utts = grid_utterances(4)
    names = write_buckeye(tmp_path / "b", utts)
    c = BuckeyeCorpus(tmp_path / "b", utterances="track")
    assert c.ids == [names[u.id] for u in utts] == ["s0101a", "s0102a", "s0201a", "s0202a"]
    for k, u in enumerate(utts):
        got = c[k]
        assert got.tiers["words"] == u.tiers["words"] and got.tiers["phones"] == u.tiers["phones"]
        assert got.text == u.text
        np.testing.assert_array_equal(got.audio, u.audio)
    f = BuckeyeCorpus(tmp_path / "b", utterances="track", filters={"speaker": ["s02"]})
    assert f.ids == ["s0201a", "s0202a"]
    with pytest.raises(CorpusError, match=r"filters.speaker=\['s07'\] selects no utterance; the values present are \['s01', 's02'\]"):
        BuckeyeCorpus(tmp_path / "b", filters={"speaker": "s07"})


def test_bad_input(tmp_path, buckeye_root):
    d = buckeye_root / "s99/s9901a"
    (d / "s9901a.phones").write_text(PHONES + "    2.50  121 t\n")  # audio lasts 1.6 s
    with pytest.raises(CorpusError, match=r"s9901a\.phones: utterance 's9901a' tier 'phones' label 't' ends at 2\.5000 s, past the end"):
        BuckeyeCorpus(buckeye_root, utterances="track")
    (d / "s9901a.phones").write_text(PHONES.replace("    0.10  121 dh\n", "0.10 dh\n"))
    with pytest.raises(CorpusError, match=r"s9901a\.phones:10: not '<end time> <colour> <label>'"):
        BuckeyeCorpus(buckeye_root)
    (tmp_path / "zips").mkdir()
    write_buckeye(tmp_path / "zips", grid_utterances(2), zipped=True)
    import shutil

    for p in (tmp_path / "zips").iterdir():
        if p.is_dir():
            shutil.rmtree(p)
    with pytest.raises(CorpusError, match=r"holds no \.words files; it holds 2 zip files .*data.unpack_to"):
        BuckeyeCorpus(tmp_path / "zips")


def test_distributed_nested_zips(tmp_path):
    """s01.zip > s01/s0101a.zip > s0101a.{wav,words,phones,log,txt}, unpacked once into data.unpack_to."""
    import shutil
    import zipfile

    utts = grid_utterances(4)
    write_buckeye(tmp_path / "dist", utts, zipped=True)
    for p in (tmp_path / "dist").iterdir():
        if p.is_dir():
            shutil.rmtree(p)
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["s01.zip", "s02.zip"]
    with zipfile.ZipFile(tmp_path / "dist" / "s01.zip") as z:
        assert z.namelist() == ["s01/s0101a.zip", "s01/s0102a.zip"]
    c = BuckeyeCorpus(tmp_path / "dist", utterances="track", unpack_to=tmp_path / "unpacked")
    assert c.ids == ["s0101a", "s0102a", "s0201a", "s0202a"]
    assert sorted(p.name for p in (tmp_path / "unpacked" / "s01" / "s0101a").iterdir()) == [
        "s0101a.log", "s0101a.phones", "s0101a.txt", "s0101a.wav", "s0101a.words"]  # fmt: skip
    for k, u in enumerate(utts):
        got = c[k]
        assert got.tiers["phones"] == u.tiers["phones"] and got.tiers["words"] == u.tiers["words"]
        np.testing.assert_array_equal(got.audio, u.audio)
    mtime = (tmp_path / "unpacked" / "s01" / "s0101a" / "s0101a.wav").stat().st_mtime_ns
    BuckeyeCorpus(tmp_path / "dist", unpack_to=tmp_path / "unpacked")  # unpacked once: not rewritten
    assert (tmp_path / "unpacked" / "s01" / "s0101a" / "s0101a.wav").stat().st_mtime_ns == mtime
