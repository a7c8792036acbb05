"""The embedded synthetic corpus: sentences, Festival parsing, tier checks, atomic cached builds."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import shutil
import threading
from pathlib import Path

import pytest
import soundfile as sf

from src.datamodules import synth
from src.datamodules.corpus import CorpusError, Interval
from src.datamodules.phones import PHONES
from src.datamodules.synth import (
    FestivalError,
    SynthCorpus,
    build_tiers,
    load_sentences,
    resolve_voices,
    sentence_words,
)

HAS_FESTIVAL = shutil.which("festival") is not None


def needs_festival(test):
    """Marker ``festival`` (deselect with ``-m 'not festival'``) and a skip when it is missing."""
    return pytest.mark.festival(pytest.mark.skipif(not HAS_FESTIVAL, reason="festival is not on PATH")(test))


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _leftovers(root: Path) -> list[Path]:
    return sorted(root.parent.glob(f".{root.name}.tmp-*"))


# ----------------------------------------------------------------------------- sentences


def test_embedded_sentences_are_varied_plain_and_long_enough():
    sentences = load_sentences()
    assert len(sentences) >= 300
    assert len(set(sentences)) == len(sentences)
    for s in sentences:
        assert s.isascii() and re.fullmatch(r"[A-Za-z ,.?]+", s), s
        assert 5 <= len(s.split()) <= 14, s
    # stress families are there
    words = {w for s in sentences for w in sentence_words(s)}
    assert {"photograph", "photography", "photographic", "economy", "economic", "record"} <= words


def test_user_sentences_file_skips_blanks_and_comments(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("# my sentences\nThe cat  sat down.\n\n  A dog barked loudly at night.  \n")
    assert load_sentences(f) == ["The cat sat down.", "A dog barked loudly at night."]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(CorpusError, match=r"empty\.txt holds no sentences"):
        load_sentences(tmp_path / "empty.txt")
    with pytest.raises(CorpusError, match=r"cannot read sentences file .*missing\.txt"):
        load_sentences(tmp_path / "missing.txt")


def test_sentence_words_and_scheme_strings():
    assert sentence_words("Could you pass me the salt, please?") == [
        "could",
        "you",
        "pass",
        "me",
        "the",
        "salt",
        "please",
    ]
    assert synth.scheme_string('He said "hi" \\ bye') == '"He said \\"hi\\" \\\\ bye"'


# ----------------------------------------------------------------------------- parsing and tiers

FESTIVAL_OUTPUT = """\
festival chatter before the first utterance
BEGIN 7
SEG pau 0.000000 0.220000 0 0
SEG hh 0.220000 0.302631 1 He
SEG iy 0.302631 0.438969 1 He
SEG s 0.438969 0.583127 1 said
SEG eh 0.583127 0.706701 1 said
SEG d 0.706701 0.745595 1 said
SEG pau 0.745595 0.900000 0 0
SEG ax 0.900000 0.950000 0 a
SEG pau 0.950000 1.260000 0 0
SYL 0.220000 0.438969 1
SYL 0.438969 0.745595 1
SYL 0.900000 0.950000 0
WORD 0.220000 0.438969 He
WORD 0.438969 0.745595 said
WORD 0.900000 0.950000 a
END 7 20000 16000
"""


def _raw():
    (raw,) = list(synth.parse_festival_output(iter(FESTIVAL_OUTPUT.splitlines())))
    return raw


def test_parse_festival_protocol():
    raw = _raw()
    assert (raw.index, raw.num_samples, raw.sample_rate) == (7, 20000, 16000)
    assert raw.segments[1] == ("hh", 0.22, 0.302631, "1", "He")
    assert len(raw.segments) == 9 and len(raw.syllables) == 3 and len(raw.words) == 3
    assert raw.words[-1] == (0.9, 0.95, "a")


def test_build_tiers_drops_pauses_lowercases_words_and_labels_stress():
    tiers = build_tiers(_raw(), duration=1.25, uid="x")
    assert [p.label for p in tiers["phones"]] == ["hh", "iy", "s", "eh", "d", "ax"]
    assert tiers["phones"][0] == Interval(0.22, 0.302631, "hh")
    assert tiers["syllables"] == [
        Interval(0.22, 0.438969, "1"), Interval(0.438969, 0.745595, "1"), Interval(0.9, 0.95, "0")
    ]  # fmt: skip
    assert [w.label for w in tiers["words"]] == ["he", "said", "a"]


def test_build_tiers_clips_a_few_ms_past_the_end_and_rejects_more():
    raw = _raw()
    tiers = build_tiers(raw, duration=0.94, uid="x")  # 'a' ends 10 ms after the audio
    assert tiers["phones"][-1] == Interval(0.9, 0.94, "ax")
    assert tiers["words"][-1] == Interval(0.9, 0.94, "a")
    with pytest.raises(
        FestivalError, match=r"utterance x: phone 'ax' .* ends at 0\.9500 s, beyond the audio end 0\.9000"
    ):
        build_tiers(raw, duration=0.90, uid="x")


def test_build_tiers_rejects_inconsistent_festival_output():
    raw = _raw()
    raw.segments[2] = ("iy", 0.302631, 0.302631, "1", "He")  # zero length
    with pytest.raises(FestivalError, match=r"utterance u1: phone 'iy' .* start 0\.302631 >= end"):
        build_tiers(raw, 1.25, "u1")
    raw = _raw()
    raw.syllables[0] = (0.22, 0.40, "1")  # not a phone boundary
    with pytest.raises(FestivalError, match=r"u1: syllables interval .* not fall on phone boundaries"):
        build_tiers(raw, 1.25, "u1")
    raw = _raw()
    raw.syllables[0] = (0.22, 0.438969, "2")
    with pytest.raises(FestivalError, match=r"stress '2', not 0/1"):
        build_tiers(raw, 1.25, "u1")
    raw = _raw()
    raw.segments[3], raw.segments[4] = raw.segments[4], raw.segments[3]
    with pytest.raises(FestivalError, match="overlap or are out of order"):
        build_tiers(raw, 1.25, "u1")


def test_plan_jobs_covers_every_utterance_once_costliest_first():
    voices = resolve_voices(["kal", "ked", "slt"])
    jobs = synth._plan_jobs(voices, 60, workers=2)
    pairs = sorted((v.key, i) for v, idx in jobs for i in idx)
    assert pairs == sorted((v, i) for v in ("kal", "ked", "slt") for i in range(60))
    assert jobs[0][0].key == "slt"
    assert {len(idx) for v, idx in jobs if v.key == "kal"} == {60}  # fast voice: one process
    assert len([1 for v, _ in jobs if v.key == "slt"]) == 5  # slow voice: split over workers


def test_resolve_voices():
    kal, slt = resolve_voices(["kal", "slt"])
    assert (kal.festival, kal.package) == ("kal_diphone", "festvox-kallpc16k")
    assert (slt.festival, slt.package) == ("cmu_us_slt_arctic_hts", "festvox-us-slt-hts")
    assert resolve_voices("rab_diphone")[0].festival == "rab_diphone"
    with pytest.raises(CorpusError, match="duplicate voices"):
        resolve_voices(["kal", "kal"])
    with pytest.raises(CorpusError, match="bad voice name"):
        resolve_voices(["kal; rm"])


# ----------------------------------------------------------------------------- errors without festival


def test_missing_festival_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    root = tmp_path / "corpus"
    with pytest.raises(
        FestivalError, match=r"not on PATH: apt-get install festival festlex-cmu festvox-kallpc16k"
    ):
        SynthCorpus(root, num_sentences=2)
    assert not root.exists() and _leftovers(root) == []


def test_festival_failure_names_the_sentence_and_leaves_nothing(tmp_path, monkeypatch):
    # a stand-in festival that lists the voices, then fails on every synthesis job
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "festival"
    fake.write_text(
        "#!/bin/sh\n"
        'if grep -q voice.list "$2"; then echo "VOICES (kal_diphone ked_diphone)"; exit 0; fi\n'
        'echo "SIOD ERROR: simulated crash" >&2; exit 3\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")  # the stand-in comes first
    root = tmp_path / "c"
    with pytest.raises(
        FestivalError, match=r"kal_diphone\) failed on sentence 0 'The photographer.*exit 3.*simulated"
    ):
        SynthCorpus(root, voices=("kal", "ked"), num_sentences=2, progress=False)
    assert not root.exists() and _leftovers(root) == []
    with pytest.raises(
        FestivalError, match=r"slt \(cmu_us_slt_arctic_hts: apt-get install festvox-us-slt-hts\)"
    ):
        SynthCorpus(root, voices=("kal", "slt"), num_sentences=2, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(CorpusError, match=r"num_sentences=100000, but .*sentences\.txt holds \d+ sentences"):
        SynthCorpus(tmp_path / "c", num_sentences=100000)
    with pytest.raises(CorpusError, match="workers must be >= 1"):
        SynthCorpus(tmp_path / "c", workers=0)


def test_refuses_to_overwrite_a_folder_that_is_not_a_synth_corpus(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.txt").write_text("precious")
    with pytest.raises(CorpusError, match=r"mine is not empty and holds no synthetic corpus"):
        SynthCorpus(root, num_sentences=2)
    assert (root / "thesis.txt").read_text() == "precious"


# ----------------------------------------------------------------------------- festival

VOICES2 = ("kal", "slt")  # a 16 kHz diphone voice and the 32 kHz HTS voice (resampled)


@pytest.fixture(scope="module")
def corpus2(tmp_path_factory):
    if not HAS_FESTIVAL:
        pytest.skip("festival is not on PATH")
    root = tmp_path_factory.mktemp("synth") / "c2x2"
    c = SynthCorpus(root, voices=VOICES2, num_sentences=2, workers=2, progress=False)
    assert c.built
    return c


@needs_festival
def test_layout_audio_and_metadata(corpus2):
    c = corpus2
    assert c.ids == ["kal__kal_0000", "kal__kal_0001", "slt__slt_0000", "slt__slt_0001"]
    assert [c.voice(i) for i in range(4)] == ["kal", "kal", "slt", "slt"]
    assert [c.sentence_index(i) for i in range(4)] == [0, 1, 0, 1]
    sentences = load_sentences()[:2]
    for i in range(4):
        u = c[i]
        info = sf.info(u.path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert u.sample_rate == 16000 and u.speaker == c.voice(i)
        assert u.text == sentences[c.sentence_index(i)]
        meta = json.loads(Path(u.path).with_suffix(".json").read_text())
        assert meta == {"text": u.text, "voice": c.voice(i), "sentence_index": c.sentence_index(i)}
        assert 2.0 < u.duration < 8.0 and 0.01 < abs(u.audio).max() <= 1.0
    manifest = json.loads((c.root / "corpus.json").read_text())
    assert manifest["count"] == 4 and manifest["settings"]["num_sentences"] == 2
    assert manifest["settings"]["voices"] == [["kal", "kal_diphone"], ["slt", "cmu_us_slt_arctic_hts"]]
    assert sorted(p.name for p in c.root.iterdir()) == ["corpus.json", "kal", "slt"]
    assert len(SynthCorpus(c.root, voices=VOICES2, num_sentences=2, max_utterances=3)) == 3


@needs_festival
def test_tiers_are_consistent_and_carry_stress(corpus2):
    c = corpus2
    for i in range(len(c)):
        u = c[i]
        phones, syllables, words = u.tier("phones"), u.tier("syllables"), u.tier("words")
        assert set(u.tiers) == {"phones", "syllables", "words"}
        assert all(p.label in PHONES for p in phones)
        assert all(a.end <= b.start for a, b in itertools.pairwise(phones))  # sorted, no overlap
        assert all(iv.start < iv.end <= u.duration for t in u.tiers.values() for iv in t)
        assert {s.label for s in syllables} == {"0", "1"}
        assert [w.label for w in words] == sentence_words(u.text)
        in_words = 0
        for w in words:  # the phones of a word tile it without gaps
            inside = [p for p in phones if w.start <= p.start and p.end <= w.end]
            assert inside[0].start == w.start and inside[-1].end == w.end
            assert all(a.end == b.start for a, b in itertools.pairwise(inside))
            in_words += len(inside)
        assert in_words == len(phones)
        for s in syllables:  # so do the phones of a syllable
            inside = [p for p in phones if s.start <= p.start and p.end <= s.end]
            assert inside and inside[0].start == s.start and inside[-1].end == s.end

    def word(u, label):
        (w,) = [w for w in u.tier("words") if w.label == label]
        ph = " ".join(p.label for p in u.tier("phones") if w.start <= p.start and p.end <= w.end)
        st = "".join(s.label for s in u.tier("syllables") if w.start <= s.start and s.end <= w.end)
        return ph, st

    for voice_offset in (0, 2):  # Festival's CMU lexicon: same phones and stress for both voices
        u0, u1 = c[voice_offset], c[voice_offset + 1]
        assert word(u0, "photographer") == ("f ax t aa g r ax f er", "0100")
        assert word(u0, "photograph") == ("f ow t ax g r ae f", "101")
        assert word(u1, "photography") == ("f ax t aa g r ax f iy", "0100")
        assert word(u1, "passion") == ("p ae sh ax n", "10")


@needs_festival
def test_second_construction_reuses_without_festival(corpus2, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in corpus2.root.rglob("*")}

    def boom(*a, **k):
        raise AssertionError("festival must not run")

    monkeypatch.setattr(synth.subprocess, "Popen", boom)
    monkeypatch.setattr(synth.subprocess, "run", boom)
    again = SynthCorpus(corpus2.root, voices=VOICES2, num_sentences=2)
    assert not again.built and again.ids == corpus2.ids
    assert again.fingerprint == corpus2.fingerprint
    assert {p: p.stat().st_mtime_ns for p in corpus2.root.rglob("*")} == before


@needs_festival
def test_build_is_deterministic(corpus2, tmp_path):
    other = SynthCorpus(tmp_path / "again", voices=VOICES2, num_sentences=2, workers=1, progress=False)
    assert other.built
    assert _tree_digest(other.root) == _tree_digest(corpus2.root)  # byte-identical, manifest included
    assert other.fingerprint == corpus2.fingerprint


@needs_festival
def test_changed_settings_rebuild_the_whole_corpus(corpus2, tmp_path, caplog):
    root = tmp_path / "c"
    shutil.copytree(corpus2.root, root)
    old_kal0 = (root / "kal" / "kal_0000.wav").read_bytes()
    with caplog.at_level(logging.WARNING, logger="src.datamodules.synth"):
        c = SynthCorpus(root, voices=("kal",), num_sentences=3, progress=False)
    assert "rebuilding the synthetic corpus" in caplog.text
    assert "num_sentences: 2 -> 3" in caplog.text
    assert c.built and c.ids == ["kal__kal_0000", "kal__kal_0001", "kal__kal_0002"]
    assert not (root / "slt").exists()  # nothing of the old corpus is left
    assert (root / "kal" / "kal_0000.wav").read_bytes() == old_kal0
    assert _leftovers(root) == []


class _Interrupt(RuntimeError):
    pass


def _interrupt_after(monkeypatch, n: int) -> None:
    real = synth._Builder._write
    calls = []

    def write(self, *a, **k):
        if len(calls) == n:
            raise _Interrupt("simulated crash")
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(synth._Builder, "_write", write)


@needs_festival
def test_interrupted_build_leaves_no_complete_looking_corpus(tmp_path, monkeypatch):
    root = tmp_path / "c"
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(_Interrupt):
        SynthCorpus(root, voices=("kal",), num_sentences=3, workers=1, progress=False)
    assert not root.exists() and _leftovers(root) == []
    monkeypatch.undo()
    killed = tmp_path / ".c.tmp-999999"  # what a killed (SIGKILL) build leaves behind
    (killed / "kal").mkdir(parents=True)
    (killed / "kal" / "kal_0000.wav").write_bytes(b"half")
    c = SynthCorpus(root, voices=("kal",), num_sentences=3, workers=1, progress=False)
    assert c.built and len(c) == 3
    assert _leftovers(root) == []


@needs_festival
def test_interrupted_rebuild_keeps_the_old_complete_corpus(corpus2, tmp_path, monkeypatch):
    root = tmp_path / "c"
    shutil.copytree(corpus2.root, root)
    digest = _tree_digest(root)
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(_Interrupt):
        SynthCorpus(root, voices=("kal",), num_sentences=3, workers=1, progress=False)
    assert _tree_digest(root) == digest and _leftovers(root) == []
    monkeypatch.undo()
    assert not SynthCorpus(root, voices=VOICES2, num_sentences=2).built  # old settings: reused


@needs_festival
def test_parallel_constructions_build_once(tmp_path):
    root = tmp_path / "shared"
    results: list[SynthCorpus | Exception] = []

    def make():
        try:
            results.append(SynthCorpus(root, voices=("kal",), num_sentences=2, progress=False))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results.append(e)

    threads = [threading.Thread(target=make) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, SynthCorpus) for r in results), results
    assert sorted(r.built for r in results) == [False, False, True]
    assert all(r.ids == ["kal__kal_0000", "kal__kal_0001"] for r in results)


@needs_festival
def test_missing_voice_names_its_debian_package(tmp_path, monkeypatch):
    fake = synth.Voice("zz", "zz_no_such_voice", "festvox-zz-imaginary", 1.0)
    monkeypatch.setitem(synth.VOICES, "zz", fake)
    root = tmp_path / "c"
    with pytest.raises(FestivalError, match=r"zz \(zz_no_such_voice: apt-get install festvox-zz-imaginary\)"):
        SynthCorpus(root, voices=("kal", "zz"), num_sentences=2)
    assert not root.exists() and _leftovers(root) == []


@needs_festival
def test_embedded_sentences_read_as_written_and_cover_all_phones():
    sentences = load_sentences()
    analysed = synth.analyse_text(sentences, voice="kal")
    phones = set()
    for s, a in zip(sentences, analysed):
        assert a.words == sentence_words(s), s  # no number, abbreviation or split word
        assert next(w for _, _, w in a.segments if w != "0") == a.words[0]
        phones |= {p for p, _, _ in a.segments if p != "pau"}
    assert phones == set(PHONES)
    (quoted,) = synth.analyse_text(['He said "hi" to me.'])
    assert quoted.words == ["he", "said", "hi", "to", "me"]
    expected = "pau hh iy s eh d hh ay pau t ax m iy pau"
    assert [p for p, _, _ in quoted.segments] == expected.split(" ")
