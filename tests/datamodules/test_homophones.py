"""Homophone corpora: the English item list, its Festival build, and the French HF dataset reader."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from src.datamodules.corpus import CorpusError
from src.datamodules.homophones import (
    CueItem,
    FrenchHomophoneCorpus,
    HomophoneError,
    _intervals,
    control_index,
    cue_item,
    french_words,
    homophone_sets,
    load_items,
    normalize_word,
    spelling_outcome,
)
from src.datamodules.synth import SynthCorpus, sentence_words
from tests.builders import TINY_FRENCH_ROWS, write_tiny_french_homophones

HAS_FESTIVAL = shutil.which("festival") is not None
HAS_DATASETS = importlib.util.find_spec("datasets") is not None


def needs_festival(test):
    return pytest.mark.festival(pytest.mark.skipif(not HAS_FESTIVAL, reason="festival is not on PATH")(test))


needs_datasets = pytest.mark.skipif(not HAS_DATASETS, reason="datasets is not installed (extra hf)")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "items.txt"
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- item list


def test_item_list_is_self_consistent():
    items = load_items()
    sets = homophone_sets()
    assert len(items) >= 60
    assert len({it.text.lower() for it in items}) == len(items)
    for it in items:
        words = sentence_words(it.text)  # what Festival's words tier should list
        assert tuple(words) == it.words, it
        assert words[it.cue_index] == it.cue_word and words[it.target_index] == it.target_word, it
        assert it.cue_index != it.target_index, it
        assert it.alternatives and it.target_word not in it.alternatives, it
        assert set(it.alternatives) | {it.target_word} == set(sets[it.target_word]), it
        if it.target2_word is not None:
            assert words[it.target2_index] == it.target2_word and it.target2_index not in (
                it.cue_index,
                it.target_index,
            )
        assert not any(c in it.text for c in "[]{}<>"), it
    targets = {it.target_word for it in items}
    for required in ("two", "too", "their", "there", "write", "right", "knew", "new", "four", "for", "week", "weak",
                     "here", "hear"):  # fmt: skip
        assert required in targets, required
    # cue before and after the target, near (adjacent) and far (>= 3 words away), each often
    d = np.array([it.distance for it in items])
    assert (d == 1).sum() >= 10 and (d == -1).sum() >= 10 and (d >= 3).sum() >= 5 and (d <= -3).sum() >= 5
    # the reduced / contracted spellings Festival reads differently are never targets
    assert not targets & {"to", "they're"}


def test_item_indices_are_counted_among_words(tmp_path):
    p = _write(tmp_path, "# c\n= two to too\n= write right\n\n{Go} left, then [right], then <right> again.\n"
                         "It's [too] {hot}, isn't it?\n")  # fmt: skip
    a, b = load_items(p)
    assert (a.line, a.cue_word, a.cue_index, a.target_index, a.target2_index) == (5, "go", 0, 3, 5)
    assert a.text == "Go left, then right, then right again." and a.alternatives == ("write",)
    assert (b.words, b.cue_index, b.target_index, b.alternatives) == (
        ("it's", "too", "hot", "isn't", "it"),
        2,
        1,
        ("two", "to"),
    )
    assert a.distance == 3 and b.distance == -1


@pytest.mark.parametrize(
    "body, message",
    [
        ("= two too\nShe has [two] cats.\n", "exactly one"),  # no cue
        ("= two too\n{She} has [two] {cats}.\n", "exactly one"),  # two cues
        ("= two too\n{She} has [two cats].\n", "is not one word"),
        ("= two too\n{She} has [three] cats.\n", "in no homophone set"),
        ("= two too\n= too tu\n", "already in the set"),
        ("= two\n", ">= 2 distinct"),
        ("= two too\n{She} has [two cats.\n", "unbalanced"),
        ("= two too\n{She} has [two] cats.\n{she} has [two] cats.\n", "same sentence as line 2"),
    ],
)
def test_bad_item_lists_name_the_line(tmp_path, body, message):
    p = _write(tmp_path, body)
    with pytest.raises(HomophoneError, match=message) as e:
        load_items(p)
    assert str(p) in str(e.value) or "holds no items" in str(e.value)


def test_cue_item_needs_a_cue_corpus(tone_corpus_dir):
    from src.datamodules.corpus import TextGridCorpus

    with pytest.raises(HomophoneError, match="no cue annotations"):
        cue_item(TextGridCorpus(tone_corpus_dir), 0)


def test_synth_corpus_rejects_sentences_and_a_file(tmp_path):
    with pytest.raises(CorpusError, match="not both"):
        SynthCorpus(tmp_path / "x", sentences=["a b"], sentences_file=tmp_path / "s.txt")
    with pytest.raises(CorpusError, match="non-blank"):
        SynthCorpus(tmp_path / "x", sentences=["a b", "  "])


def test_control_index_matches_the_cue_distance():
    def item(cue, target, target2=None):
        return CueItem("u", "", "c", cue, "t", target, (), None if target2 is None else "t2", target2)

    assert control_index(item(3, 1), 6) == 2  # d = 2: words 0, 2, 4 are 1 off; the cue's side: 2, 4; lower: 2
    assert control_index(item(4, 1), 6) == 3  # d = 3: words 3 and 5 are 1 off (0 and 2: 2 off); lower: 3
    assert control_index(item(0, 2), 5) == 4  # distance 2 on the other side
    assert control_index(item(0, 2, 4), 5) == 1  # 4 is a target: distance 1 before 3 (same side, lower)
    assert control_index(item(1, 0), 2) is None
    # every English item has a control word, never the cue or a target, at most 3 words off the cue's distance
    for it in load_items():
        ci = item(it.cue_index, it.target_index, it.target2_index)
        j = control_index(ci, len(it.words))
        assert j not in (it.cue_index, it.target_index, it.target2_index)
        assert abs(abs(j - it.target_index) - abs(it.distance)) <= 3


# ----------------------------------------------------------------------------- spelling outcome


def test_spelling_outcome_aligns_the_hypothesis_to_the_words():
    it = load_items()[0]  # She bought [two] {apples} at the market.
    item = CueItem("u", it.text, it.cue_word, it.cue_index, it.target_word, it.target_index, it.alternatives)
    cases = {
        "She bought two apples at the market.": "correct",
        "she bought 2 apples at the market": "correct",  # digits spell the number
        "She bought to apples at the market.": "alternative",
        "He bought too apples in a market.": "alternative",
        "She bought three apples at the market.": "other",
        "She bought apples at the market.": "missing",
        "": "missing",
    }
    for hyp, want in cases.items():
        assert spelling_outcome(item, it.words, hyp) == want, hyp
    assert spelling_outcome(item, it.words, "She bought 2 apples", equivalents={}) == "other"
    with pytest.raises(HomophoneError, match="outside"):
        spelling_outcome(item, it.words, "x", target_index=9)


# ----------------------------------------------------------------------------- Festival build


@needs_festival
def test_festival_build_words_tier_matches_the_annotation(tmp_path):
    from src.datamodules.homophones import HomophoneCorpus, check_homophony

    items = load_items()
    chosen = [items[0], next(it for it in items if it.target2_word is not None)]  # two apples; two plus two
    assert chosen[1].text == "Two plus two is four."
    p = _write(tmp_path, "= two to too\n" + "\n".join(_marked(it) for it in chosen) + "\n")
    c = HomophoneCorpus(tmp_path / "corpus", voices=["kal"], items_file=p, progress=False)
    assert c.built and len(c) == 2 and c.ids == ["kal__kal_0000", "kal__kal_0001"] and c.name == "homophones"
    for i, want in enumerate(chosen):
        ci = cue_item(c, i)
        assert c.item(i).line == i + 2
        words = [w.label for w in c.annotation(i).tier("words")]
        assert ci.utterance == c.ids[i] and ci.text == want.text
        assert words[ci.cue_index] == ci.cue_word == want.cue_word
        assert words[ci.target_index] == ci.target_word == want.target_word
        assert ci.alternatives == want.alternatives
        if want.target2_word is not None:
            assert words[ci.target2_index] == ci.target2_word == want.target2_word
        u = c[i]
        assert u.speaker == "kal" and u.text == want.text and u.sample_rate == 16000
        iv = u.tier("words")[ci.target_index]
        assert 0 < iv.start < iv.end <= u.duration
    again = HomophoneCorpus(tmp_path / "corpus", voices=["kal"], items_file=p)
    assert not again.built and again.fingerprint == c.fingerprint
    # Festival reads "two" like "too" but "to" as /t ax/
    h = check_homophony(c.items, "kal")
    assert h == {2: ("too",), 3: ("too",)}
    # a words tier that no longer matches its item fails loudly on load, naming the line and utterance
    from src.datamodules.corpus import Interval, read_textgrid, write_textgrid

    tg = tmp_path / "corpus" / "kal" / "kal_0001.TextGrid"
    tiers = read_textgrid(tg)
    tiers["words"][2] = Interval(tiers["words"][2].start, tiers["words"][2].end, "too")
    write_textgrid(tg, tiers, again[1].duration)
    with pytest.raises(HomophoneError, match=r"items.txt:3: .*utterance 'kal__kal_0001' gives .*'too'"):
        HomophoneCorpus(tmp_path / "corpus", voices=["kal"], items_file=p)


def _marked(it) -> str:
    words = it.text.split()  # the two items chosen have no punctuation inside words
    marks = {it.target_index: "[{}]", it.cue_index: "{{{}}}"}
    if it.target2_index is not None:
        marks[it.target2_index] = "<{}>"
    out = []
    for k, w in enumerate(words):
        core, tail = w.rstrip(".,?!"), w[len(w.rstrip(".,?!")) :]
        out.append(marks[k].format(core) + tail if k in marks else w)
    return " ".join(out)


@needs_festival
def test_festival_words_that_differ_fail_before_synthesis(tmp_path):
    from src.datamodules.homophones import HomophoneCorpus

    p = _write(tmp_path, "= four for\n\nMeet me at [four] {o'clock}.\n")  # Festival reads "oclock"
    with pytest.raises(HomophoneError, match=r"items.txt:3: item .*oclock.*o'clock"):
        HomophoneCorpus(tmp_path / "corpus", voices=["kal"], items_file=p, progress=False)
    assert not (tmp_path / "corpus").exists()


# ----------------------------------------------------------------------------- French dataset


@pytest.fixture(scope="module")
def tiny_fr(tmp_path_factory) -> Path:
    # stored at 22.05 kHz, so reading at 16 kHz resamples
    return write_tiny_french_homophones(tmp_path_factory.mktemp("fr") / "ds", sample_rate=22050)


@needs_datasets
def test_french_audio_words_and_cue_items(tiny_fr, caplog):
    with caplog.at_level(logging.WARNING):
        c = FrenchHomophoneCorpus(tiny_fr)
    assert len(c) == 6 and c.ids == [str(k) for k in range(6)] and c.name == "french_homophones"
    assert "1 of 6 rows" in caplog.text and "cue not in the alignment: 1" in caplog.text
    u = c[0]
    n_stored = round(0.05 * 22050) + 5 * (round(0.12 * 22050) + round(0.04 * 22050))
    assert u.sample_rate == 16000 and len(u.audio) == math.ceil(n_stored * 16000 / 22050) == c.num_samples(0)
    assert u.audio.dtype == np.float32 and u.text == "On y trouve un aéroport." and u.speaker == ""
    words = u.tier("words")
    assert [w.label for w in words] == ["on", "y", "trouve", "un", "aéroport"]
    s0 = round(0.05 * 22050)
    assert words[0].start == s0 / 22050 and words[0].end == (s0 + round(0.12 * 22050)) / 22050
    # the word's tone survives decoding and resampling: 220 Hz * (1 + 0.25 k) at word k
    for k in (0, 2):
        seg = u.audio[int(words[k].start * 16000) + 80 : int(words[k].end * 16000) - 80].astype(np.float64)
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=16000 * 4))
        assert abs(np.argmax(spec) / 4 - 220.0 * (1 + 0.25 * k)) < 2.0
    assert np.abs(u.audio[: int(words[0].start * 16000) - 40]).max() < 0.03  # lead silence (noise only)

    assert cue_item(c, 0) == CueItem("0", "On y trouve un aéroport.", "on", 0, "trouve", 2, ())
    assert cue_item(c, 2) == CueItem("2", "Elles sont parties tôt.", "elles", 0, "parties", 2, (), "sont", 1)
    assert cue_item(c, 4) is None  # its cue "Nous" is not in "Vous chantez bien."
    assert cue_item(c, 5).target2_word == "l'as" and cue_item(c, 5).target2_index == 1
    assert [c.num_samples(i) for i in range(6)] == [len(c[i].audio) for i in range(6)]
    ann = c.annotation(3)
    assert ann.audio.size == 0 and [w.label for w in ann.tier("words")] == ["il", "mange", "une", "pomme"]


@needs_datasets
def test_french_items_selection_keeps_row_ids(tiny_fr, caplog):
    with caplog.at_level(logging.WARNING):
        c = FrenchHomophoneCorpus(tiny_fr, items=[4, 0])
    assert c.ids == ["4", "0"] and [c.row(0), c.row(1)] == [4, 0]
    assert cue_item(c, 0) is None and cue_item(c, 1).utterance == "0"
    assert "1 of 2 rows" in caplog.text
    assert c[0].text == TINY_FRENCH_ROWS[4]["transcription"]
    for bad, msg in (([6], "row 6 is out of range"), ([1, 1], "duplicate rows")):
        with pytest.raises(HomophoneError, match=msg):
            FrenchHomophoneCorpus(tiny_fr, items=bad)


@needs_datasets
def test_french_matching_is_case_and_punctuation_insensitive(tmp_path):
    rows = [
        {
            "transcription": "On trouve, on trouve.",
            "cue_word": "On,",
            "target_word": "Trouve.",
            "target_word_2": "None",
        },
        {
            "transcription": "Les chats.",
            "cue_word": "les chats",
            "target_word": "chats",
            "target_word_2": None,
        },
        {"transcription": "Il dort.", "cue_word": "dort", "target_word": "dort", "target_word_2": ""},
        {"transcription": "Il dort.", "cue_word": None, "target_word": "dort", "target_word_2": None},
        {
            "transcription": "Elle dort bien.",
            "cue_word": "Elle",
            "target_word": "dort",
            "target_word_2": "lui",
        },
    ]
    p = write_tiny_french_homophones(tmp_path / "ds", rows=rows, ids=True, client_ids=True)
    first = FrenchHomophoneCorpus(p)
    assert first.ids == ["utt0", "utt1", "utt2", "utt3", "utt4"] and first.speaker(1) == "speaker1"
    assert first.speakers_known()
    ci = cue_item(first, 0)
    assert (ci.cue_word, ci.cue_index, ci.target_word, ci.target_index, ci.target2_word) == (
        "on",
        0,
        "trouve",
        1,
        None,
    )
    assert [cue_item(first, k) for k in (1, 2, 3)] == [None, None, None]
    assert (
        cue_item(first, 4).target_index == 1 and cue_item(first, 4).target2_index is None
    )  # target 2 not found
    assert first.skipped == {"cue not one word": 1, "cue and target are the same word": 1, "cue missing": 1,
                             "second target not in the alignment": 1}  # fmt: skip
    skip = FrenchHomophoneCorpus(p, repeated="skip")
    assert cue_item(skip, 0) is None and skip.skipped["cue repeated"] == 1
    assert normalize_word(" L'Avion! ") == "lavion" and french_words("« Il  dort. »") == ["il", "dort"]


@needs_datasets
def test_french_dataset_dict_split_and_fingerprint(tiny_fr, tmp_path):
    p = write_tiny_french_homophones(tmp_path / "dd", split="test", sample_rate=22050)
    c = FrenchHomophoneCorpus(p, split="test")
    assert len(c) == 6 and c.split == "test"
    with pytest.raises(HomophoneError, match=r"no split 'train'; it has \['test'\]"):
        FrenchHomophoneCorpus(p)
    # the fingerprint follows the content, not the folder
    copy = tmp_path / "copy"
    shutil.copytree(tiny_fr, copy)
    base = FrenchHomophoneCorpus(tiny_fr)
    assert FrenchHomophoneCorpus(copy).fingerprint == base.fingerprint
    others = {FrenchHomophoneCorpus(tiny_fr, items=[0, 1]).fingerprint, FrenchHomophoneCorpus(tiny_fr, sample_rate=8000).fingerprint,
              write_tiny_french_homophones(tmp_path / "s1", seed=1, sample_rate=22050) and FrenchHomophoneCorpus(tmp_path / "s1").fingerprint}  # fmt: skip
    assert base.fingerprint not in others and len(others) == 3


@needs_datasets
def test_french_clear_errors(tiny_fr, tmp_path):
    with pytest.raises(HomophoneError, match="does not exist"):
        FrenchHomophoneCorpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HomophoneError, match="save_to_disk folder"):
        FrenchHomophoneCorpus(tmp_path / "empty")
    bad = [{"transcription": "Il dort.", "cue_word": "Il", "target_word": "dort", "target_word_2": None,
            "alignment": [{"start": 0.05, "end": 0.2, "word": "il"}, {"start": 0.3, "end": 2.5, "word": "dort"}]}]  # fmt: skip
    c = FrenchHomophoneCorpus(write_tiny_french_homophones(tmp_path / "bad", rows=bad))
    with pytest.raises(CorpusError, match=r"utterance '0'.*'dort' ends at 2.500 s, beyond the audio end"):
        c[0]
    with pytest.raises(HomophoneError, match="row 0: word 'x'"):
        FrenchHomophoneCorpus(write_tiny_french_homophones(tmp_path / "bad2", rows=[{**bad[0], "alignment": [
            {"start": 0.3, "end": 0.1, "word": "x"}]}]))  # fmt: skip
    with pytest.raises(HomophoneError, match="repeated must be"):
        FrenchHomophoneCorpus(tiny_fr, repeated="last")


@needs_datasets
@pytest.mark.skipif(
    os.environ.get("HF_HUB_OFFLINE") != "1", reason="HF_HUB_OFFLINE=1 is not set (conftest sets it)"
)
def test_french_hub_id_offline_says_how_to_use_a_local_copy():
    with pytest.raises(HomophoneError, match=r"needs network access.*save_to_disk.*data.source=") as e:
        FrenchHomophoneCorpus("hosein-m/french_homophone_asr")
    assert "OfflineModeIsEnabled" in str(e.value) or "offline" in str(e.value).lower()


@needs_datasets
def test_alignment_layouts_and_the_torchcodec_pitfall(tiny_fr):
    want = [{"start": 0.0, "end": 0.5, "word": "on"}, {"start": 0.5, "end": 1.0, "word": "y"}]
    assert _intervals({"intervals": want}, "x") == want
    assert (
        _intervals({"intervals": {"start": [0.0, 0.5], "end": [0.5, 1.0], "word": ["on", "y"]}}, "x") == want
    )
    assert _intervals('{"intervals": [{"start": 0.0, "end": 0.5, "word": "on"}, {"start": 0.5, "end": 1.0, "word": "y"}]}', "x") == want  # fmt: skip
    with pytest.raises(HomophoneError, match="row 3: alignment must hold"):
        _intervals({"words": []}, "row 3")
    if importlib.util.find_spec("torchcodec") is None:
        import datasets

        # datasets >= 4 decodes Audio columns with torchcodec: why the reader uses decode=False
        with pytest.raises(ImportError, match="torchcodec"):
            datasets.load_from_disk(str(tiny_fr))[0]["audio"]


@needs_datasets
@pytest.mark.parametrize("fmt", ["MP3", "FLAC"])
def test_french_compressed_audio_decodes(tmp_path, fmt):
    rows = [dict(TINY_FRENCH_ROWS[0])]
    c = FrenchHomophoneCorpus(
        write_tiny_french_homophones(tmp_path / fmt, rows=rows, sample_rate=48000, audio_format=fmt)
    )
    u = c[0]
    assert u.sample_rate == 16000 and c.num_samples(0) == len(u.audio)
    assert abs(len(u.audio) - 0.85 * 16000) <= (0 if fmt == "FLAC" else 0.1 * 16000)  # MP3: encoder padding
    # the loudest frequency of the whole clip is one of the five word tones, within 3 Hz
    spec = np.abs(np.fft.rfft(u.audio.astype(np.float64), n=16000 * 4))
    peak = np.argmax(spec) / 4
    assert min(abs(peak - 220.0 * (1 + 0.25 * k)) for k in range(5)) < 3.0
