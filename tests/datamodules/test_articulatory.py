"""The VocalTractLab articulatory corpus: plans, gesture checks, files, tracks, alignment."""

from __future__ import annotations

import itertools
import json
import shutil
import time

import numpy as np
import pytest

from src.datamodules import articulatory as art
from src.datamodules.articulatory import (
    EMA_NAMES,
    SUPPORTED_PHONES,
    SynthArticulatoryCorpus,
    UnsupportedPhoneError,
    check_gestural_score,
    lip_aperture,
    make_plan,
)


def needs_vtl(test):
    """Marker ``articulatory`` (deselect with ``-m 'not articulatory'``) and a skip without the package."""
    skip = pytest.mark.skipif(not art.vtl_available(), reason="vocaltractlab-cython is not installed")
    return pytest.mark.articulatory(skip(test))


SEED = 28  # its two 1-2-word utterances (2.4 s) hold 4 bilabial stops (p, m) and 2 open vowels (a, a:)
WORDS = (1, 2)
OPEN_VOWELS = {"a", "a:"}


# ----------------------------------------------------------------------------- plans (no VTL)


def test_plan_is_deterministic_and_independent_of_corpus_size():
    a, b = make_plan(7, 3), make_plan(7, 3)
    assert a == b
    assert make_plan(7, 4) != a and make_plan(8, 3) != a
    assert a.id == "art0003"


def test_plan_phones_durations_and_tiers():
    for i in range(20):
        p = make_plan(0, i)
        assert p.phones[0] == "" and p.phones[-1] == "" and all(p.phones[1:-1])
        assert set(p.phones[1:-1]) <= SUPPORTED_PHONES
        ms = np.asarray(p.durations) * 1000
        np.testing.assert_allclose(ms, np.rint(ms), atol=1e-9)  # whole milliseconds
        assert p.duration >= art.MIN_UTTERANCE_S and p.durations[0] >= 0.12 and p.durations[-1] >= 0.15
        assert round(p.duration * 1000) % 5 == 2  # 2 ms past an EMA frame
        tiers = p.tiers()
        phones = tiers["phones"]
        assert [iv.label for iv in phones] == list(p.phones[1:-1])
        assert phones[0].start == pytest.approx(p.durations[0], abs=1e-12)
        assert all(x.end == pytest.approx(y.start, abs=1e-12) for x, y in itertools.pairwise(phones))
        assert phones[-1].end == pytest.approx(p.duration - p.durations[-1], abs=1e-12)
        # words and syllables spell out the phones they span
        assert " ".join(iv.label for iv in tiers["words"]) == p.text
        assert "".join(iv.label for iv in tiers["syllables"]) == "".join(p.phones)
        assert 3 <= len(tiers["words"]) <= 6


def test_first_syllable_has_no_cluster():
    for i in range(50):
        p = make_plan(1, i)
        first_vowel = next(k for k, q in enumerate(p.phones) if q in art.VOWEL_GESTURES)
        assert first_vowel == 2  # pause, one consonant, vowel


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setattr(art, "vtl_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[articulatory\]'"):
        SynthArticulatoryCorpus(tmp_path / "c", num_utterances=1)
    assert not (tmp_path / "c" / "corpus.json").exists()


def test_spawned_worker_importing_an_unguarded_script_gets_a_clear_error(tmp_path, monkeypatch):
    import multiprocessing as mp

    monkeypatch.setattr(mp.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(RuntimeError, match="if __name__ == '__main__'"):
        SynthArticulatoryCorpus(tmp_path / "c", num_utterances=1)
    assert not (tmp_path / "c").exists()  # raised before taking the lock


# ----------------------------------------------------------------------------- gestural scores

_SCORE = """<gestural_score>
  <gesture_sequence type="vowel-gestures" unit="">
    <gesture value="a" slope="0" duration_s="0.25" time_constant_s="0.012" neutral="0" />
    <gesture value="a" slope="0" duration_s="0.2" time_constant_s="0.012" neutral="0" />
    <gesture value="@" slope="0" duration_s="0.15" time_constant_s="0.012" neutral="0" />
  </gesture_sequence>
  <gesture_sequence type="lip-gestures" unit="">
    <gesture value="" slope="0" duration_s="0.21" time_constant_s="0.012" neutral="1" />
    <gesture value="ll-labial-closure" slope="0" duration_s="0.1" time_constant_s="0.012" neutral="0" />
  </gesture_sequence>
  <gesture_sequence type="tongue-tip-gestures" unit="">
  </gesture_sequence>
</gestural_score>"""


def test_check_gestural_score_accepts_a_realised_sequence():
    check_gestural_score(_SCORE, ["", "a", "b", "a", ""], [0, 0.1, 0.2, 0.3, 0.4, 0.6], "u")
    check_gestural_score(_SCORE, ["", "a", "m", "a", ""], [0, 0.1, 0.2, 0.3, 0.4, 0.6], "u")


@pytest.mark.parametrize(
    "phones, match",
    [
        (
            ["", "a", "d", "a", ""],
            "'d' at 0.200-0.300 s has no tongue-tip closure",
        ),  # nothing on the tongue tip
        (["", "a", "f", "a", ""], "'f' .* no lip fricative"),  # a lip gesture, but of another manner
        (["", "a", "b", "i:", ""], r"vowel gestures \['a', 'a'\] do not match .*'i:'"),
        (["", "a", "b", "a", "b", ""], "'b' at 0.400-0.500 s"),  # one closure cannot serve two stops
        (["", "a", "w", "a", ""], "'w' is not in VTL's German SAMPA inventory"),
    ],
)
def test_check_gestural_score_raises_for_dropped_phones(phones, match):
    bounds = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6][: len(phones) + 1]
    bounds[-1] = 0.6
    with pytest.raises(UnsupportedPhoneError, match=match):
        check_gestural_score(_SCORE, phones, bounds, "u")


def test_check_gestural_score_checks_the_length():
    with pytest.raises(art.CorpusError, match="lasts 0.6000 s but the phones last 0.7000 s"):
        check_gestural_score(_SCORE, ["", "a", "b", "a", ""], [0, 0.1, 0.2, 0.3, 0.4, 0.7], "u")


@pytest.mark.parametrize("bad", ["w", "{", "V"])  # English-only symbols VTL would silently drop
def test_unsupported_phone_raises_before_synthesis(bad):
    with pytest.raises(UnsupportedPhoneError, match=repr(bad)):
        art.synthesize(["", "a", bad, "a", ""], [0.15, 0.12, 0.1, 0.12, 0.3])


@pytest.mark.parametrize(
    "phones",
    [["", "a", "d", "a", ""], ["", "S", "t", "a", "l", "n", "o:", ""]],  # plain; cluster, lateral, nasal
)
@needs_vtl
def test_vtl_gestural_scores_pass_the_check_and_catch_a_swap(tmp_path, phones):
    vtl = pytest.importorskip("vocaltractlab_cython")
    durations = [0.15] + [0.1] * (len(phones) - 2) + [0.45]
    seg, ges = tmp_path / "u.seg", tmp_path / "u.ges"
    seg.write_text("".join(f"name = {p}; duration_s = {d:.3f};\n" for p, d in zip(phones, durations)))
    vtl.phoneme_file_to_gesture_file(str(seg), str(ges))
    bounds = np.concatenate([[0], np.cumsum(durations)])
    check_gestural_score(ges.read_text(), phones, bounds, "u")
    swapped = [
        "b" if p in ("d", "t", "l", "n") else p for p in phones
    ]  # claim lips where VTL moved the tongue
    with pytest.raises(UnsupportedPhoneError, match="'b' .* no lip closure"):
        check_gestural_score(ges.read_text(), swapped, bounds, "u")


# ----------------------------------------------------------------------------- the corpus


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    if not art.vtl_available():
        pytest.skip("vocaltractlab-cython is not installed")
    root = tmp_path_factory.mktemp("art") / "synth_articulatory"
    t0 = time.perf_counter()
    SynthArticulatoryCorpus(root, num_utterances=2, seed=SEED, workers=2, words_per_utterance=WORDS)
    return root, time.perf_counter() - t0


@pytest.fixture(scope="module")
def utts(corpus_root):
    return list(
        SynthArticulatoryCorpus(corpus_root[0], num_utterances=2, seed=SEED, words_per_utterance=WORDS)
    )


@needs_vtl
def test_layout_and_manifest(corpus_root, utts):
    root, _ = corpus_root
    m = json.loads((root / "corpus.json").read_text())
    assert m["settings"] == {
        "generator_version": art.GENERATOR_VERSION, "num_utterances": 2, "seed": SEED, "sample_rate": 16000,
        "words_per_utterance": list(WORDS),
    }  # fmt: skip
    assert m["vtl_version"].startswith("API 2.4.2")
    assert m["tracks"]["ema"]["names"] == list(EMA_NAMES)
    assert m["speech_seconds"] == pytest.approx(
        sum(make_plan(SEED, i, WORDS).duration for i in range(2)), abs=1e-3
    )
    assert 0 < m["cpu_seconds"] < m["worker_wall_seconds"] * 1.05
    assert [u.id for u in utts] == ["jd3__art0000", "jd3__art0001"]
    assert sorted(p.name for p in (root / "jd3").iterdir()) == sorted(
        f"art000{i}{s}" for i in range(2) for s in (".wav", ".TextGrid", ".tracks.npz", ".json")
    )
    assert not (root.parent / ".synth_articulatory.partial").exists()
    for u, plan in zip(utts, (make_plan(SEED, i, WORDS) for i in range(2))):
        assert u.sample_rate == 16000 and u.speaker == "jd3" and u.audio.dtype == np.float32
        assert np.abs(u.audio).max() == pytest.approx(art.PEAK, abs=1e-3)
        assert u.text == plan.text and len(u.text.split()) in (1, 2)
        assert u.duration == pytest.approx(
            plan.duration, abs=1.5 / 16000
        )  # the audio ends where the phones end


@needs_vtl
def test_tiers_are_the_planned_times(utts):
    for u, plan in zip(utts, (make_plan(SEED, i, WORDS) for i in range(2))):
        want = plan.tiers()
        assert set(u.tiers) == {"phones", "syllables", "words"}
        for name in want:
            got = u.tier(name)
            assert [iv.label for iv in got] == [iv.label for iv in want[name]]
            np.testing.assert_allclose(
                [(iv.start, iv.end) for iv in got], [(iv.start, iv.end) for iv in want[name]], atol=1e-9
            )
        phones = u.tier("phones")
        assert {iv.label for iv in phones} <= SUPPORTED_PHONES
        assert phones[0].start >= 0.12 and phones[-1].end <= u.duration - 0.15


@needs_vtl
def test_tracks_shapes_rates_names(utts):
    for u in utts:
        ema = u.tracks["ema"]
        assert ema.rate == 200.0 and ema.names == EMA_NAMES and len(EMA_NAMES) == 12
        assert EMA_NAMES[:3] == ("tongue_back_x", "tongue_back_y", "tongue_middle_x")
        assert ema.values.dtype == np.float32 and ema.values.ndim == 2 and ema.values.shape[1] == 12
        assert np.isfinite(ema.values).all()
        assert abs(len(ema.values) - u.duration * ema.rate) <= 1 + 1e-6  # within one frame
        assert (np.ptp(ema.values, axis=0) > 0.05).all()  # every kept coordinate moves (cm)
        tract = u.tracks["tract"]
        assert tract.rate == pytest.approx(44100 / 110) and tract.names[5] == "LD" and len(tract.names) == 19
        assert abs((len(tract.values) - 1) - u.duration * tract.rate) <= 1 + 1e-6
        assert np.isfinite(tract.values).all()


@needs_vtl
def test_lips_close_in_bilabial_stops(utts):
    """EMA time 0 is audio time 0: the lips are closer in every p/b/m than in any open vowel."""
    closures, opens = [], []
    for u in utts:
        ema = u.tracks["ema"]
        aperture = lip_aperture(ema)  # (T,)
        t = np.arange(len(aperture)) / ema.rate
        for iv in u.tier("phones"):
            inside = aperture[(t >= iv.start) & (t < iv.end)]
            if iv.label in art.BILABIAL_STOPS:
                closures.append(inside.min())
            elif iv.label in OPEN_VOWELS:
                opens.append(np.median(inside))
    assert len(closures) >= 2 and len(opens) >= 2, (closures, opens)  # the seed's precondition
    assert max(closures) < min(opens) - 0.3, (closures, opens)
    # shifting the phones by 60 ms breaks it: the check is sensitive to misalignment
    shifted = []
    for u in utts:
        aperture = lip_aperture(u.tracks["ema"])
        t = np.arange(len(aperture)) / 200.0
        for iv in u.tier("phones"):
            if iv.label in art.BILABIAL_STOPS:
                shifted.append(aperture[(t >= iv.start + 0.06) & (t < iv.end + 0.06)].min())
    assert np.mean(shifted) > np.mean(closures) + 0.1


@needs_vtl
def test_reuse_without_regeneration(corpus_root, tmp_path, monkeypatch):
    root, _ = corpus_root
    before = {p.name: p.stat().st_mtime_ns for p in (root / "jd3").iterdir()}

    def boom(*a, **k):
        raise AssertionError("should not synthesise")

    monkeypatch.setattr(art, "_write_utterance", boom)
    c = SynthArticulatoryCorpus(
        root, num_utterances=2, seed=SEED, words_per_utterance=WORDS, max_utterances=1
    )
    assert len(c) == 1
    assert {p.name: p.stat().st_mtime_ns for p in (root / "jd3").iterdir()} == before
    # fewer utterances with otherwise equal settings: copied from the existing corpus, not synthesised
    small = tmp_path / "small"
    shutil.copytree(root, small)
    c1 = SynthArticulatoryCorpus(small, num_utterances=1, seed=SEED, words_per_utterance=WORDS, workers=1)
    assert c1.ids == ["jd3__art0000"]
    np.testing.assert_array_equal(
        c1[0].audio, SynthArticulatoryCorpus(root, 2, SEED, words_per_utterance=WORDS)[0].audio
    )
