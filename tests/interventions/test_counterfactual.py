"""Counterfactual audio (src/interventions/counterfactual.py): duration-controlled minimal pairs, cue pairs with a
sample-identical target, noise at a stated SNR, non-speech clips, user pairs from a csv.

References are independent: frame counts from explicit loops over frame times, SNR from its textbook formula on the
returned arrays, splice identity by comparing samples, spectra slopes from numpy's FFT."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from src.datamodules.corpus import Interval, Utterance
from src.interventions.counterfactual import (
    CUE_PAIRS,
    CounterfactualError,
    Pair,
    add_noise,
    check_frame_counts,
    cue_pairs,
    noise_pairs,
    nonspeech_clip,
    parse_cue_pair,
    read_pairs_csv,
    synthesize_pairs,
    target_samples,
)

HAS_FESTIVAL = shutil.which("festival") is not None


def needs_festival(test):
    return pytest.mark.festival(pytest.mark.skipif(not HAS_FESTIVAL, reason="festival is not on PATH")(test))


def _frames_per_word(utt: Utterance, rate: float, offset: float) -> list[int]:
    """Literal: frame k at time offset + k / rate belongs to the word whose [start, end) holds it."""
    n = int(math.floor(len(utt.audio) / utt.sample_rate * rate))
    counts = []
    for w in utt.tier("words"):
        c = 0
        for k in range(n):
            t = offset + k / rate
            if w.start <= t < w.end:
                c += 1
        counts.append(c)
    return counts


@pytest.fixture(scope="module")
def minimal_pairs():
    if not HAS_FESTIVAL:
        pytest.skip("festival is not on PATH")
    return synthesize_pairs(
        [("She bought two apples at the market.", "She bought two melons at the market."),
         ("The cat sat on the mat.", "The elephant sat on the mat.")],
        voice="kal", ids=["apples", "elephant"],
    )  # fmt: skip


@needs_festival
def test_minimal_pairs_have_equal_frames_per_word(minimal_pairs):
    for p in minimal_pairs:
        assert len(p.clean.audio) == len(p.corrupted.audio)
        assert [w.label for w in p.clean.tier("words")] != [w.label for w in p.corrupted.tier("words")]
        for rate, offset in ((50.0, 0.01), (49.95, 0.0), (100.0, 0.005)):
            a = _frames_per_word(p.clean, rate, offset)
            b = _frames_per_word(p.corrupted, rate, offset)
            assert a == b, (p.id, rate)
            check_frame_counts(p, rate, offset)  # no error
    elephant = minimal_pairs[1]
    assert elephant.differing == (1,)
    # 'elephant' (3 syllables) was squeezed into the time of 'cat': Festival reports it at cat's interval
    wa, wb = elephant.clean.tier("words")[1], elephant.corrupted.tier("words")[1]
    assert abs(wa.start - wb.start) < 2e-6 and abs(wa.end - wb.end) < 2e-6 and wb.label == "elephant"


@needs_festival
def test_control_pair_is_the_same_audio():
    (c,) = synthesize_pairs([("She bought two apples at the market.", "")], control=True)
    assert c.kind == "control" and c.differing == ()
    # the duration-controlled path with a sentence's own times gives Festival's natural audio, sample for sample
    assert np.array_equal(c.clean.audio, c.corrupted.audio)


def test_frame_count_mismatch_names_pair_and_word():
    sr = 16000
    audio = np.zeros(sr, np.float32)
    a = Utterance("a", audio, sr, tiers={"words": [Interval(0.1, 0.3, "the"), Interval(0.3, 0.5, "cat")]})
    b = Utterance("b", audio, sr, tiers={"words": [Interval(0.1, 0.3, "the"), Interval(0.3, 0.62, "elephant")]})
    with pytest.raises(CounterfactualError, match=r"pair 'p1': word 1 \('cat' / 'elephant'\) has 10 frames .* 16"):
        check_frame_counts(Pair("p1", "user", a, b), 50.0, 0.0)


@needs_festival
def test_bad_minimal_pairs_are_refused_before_synthesis():
    with pytest.raises(CounterfactualError, match="pair 'x'.* 3 and 4 words"):
        synthesize_pairs([("The cat sat.", "The big cat sat.")], ids=["x"])
    with pytest.raises(CounterfactualError, match="same sentence"):
        synthesize_pairs([("The cat sat.", "The cat sat.")])
    with pytest.raises(CounterfactualError, match="diphone voice"):
        synthesize_pairs([("The cat sat.", "The dog sat.")], voice="slt")


def test_cue_pair_lines_parse():
    a, b, t, f, ti, ci = parse_cue_pair("She bought [two|too] {apples|many}.")
    assert (a, b, t, f, ti, ci) == ("She bought two apples.", "She bought too many.", "two", "too", 2, 3)
    for line in CUE_PAIRS:
        parse_cue_pair(line)
    with pytest.raises(CounterfactualError, match="needs one"):
        parse_cue_pair("She bought [two|too] apples.")


@needs_festival
def test_cue_pairs_target_audio_is_sample_identical():
    pairs = cue_pairs(num_items=4)
    assert len(pairs) == 4
    for p in pairs:
        lo, hi = target_samples(p)
        assert hi - lo > 800  # a real word (> 50 ms)
        assert np.array_equal(p.clean.audio[lo:hi], p.corrupted.audio[lo:hi])
        assert not np.array_equal(p.clean.audio, p.corrupted.audio)  # the cue differs
        assert p.clean.tier("words")[p.target_index].label == p.target
        assert p.corrupted.tier("words")[p.target_index].label == p.foil
        assert p.meta["cue_index"] in p.differing
        check_frame_counts(p, 50.0, 0.01)


def _utt(n=16000, sr=16000, seed=0):
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(n)).astype(np.float32)
    return Utterance("u", audio, sr, tiers={"words": [Interval(0.1, 0.3, "a"), Interval(0.3, 0.55, "b"),
                                                      Interval(0.6, 0.9, "c")]})  # fmt: skip


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0])
def test_noise_has_the_stated_snr(snr):
    u = _utt()
    noisy, noise = add_noise(u, [0, 2], snr, seed=3)
    sr = u.sample_rate
    idx = np.r_[int(0.1 * sr) : int(0.3 * sr), int(0.6 * sr) : int(0.9 * sr)]
    sig = u.audio[idx].astype(np.float64)
    added = noisy.audio.astype(np.float64) - u.audio.astype(np.float64)
    measured = 10 * math.log10(float((sig**2).sum()) / float((added[idx] ** 2).sum()))
    assert abs(measured - snr) < 0.01  # float32 rounding of the noisy audio only
    outside = np.setdiff1d(np.arange(len(u.audio)), idx)
    assert np.array_equal(noisy.audio[outside], u.audio[outside])
    assert not np.array_equal(add_noise(u, [0, 2], snr, seed=4)[1], noise)  # seeds differ


@pytest.mark.parametrize("snr", [40.0, 20.0])
def test_dither_has_the_stated_snr(snr):
    """The rendition control's dither: white noise over every sample at the stated SNR, measured here from the
    float32 audio (signal power / power of what was added), seeded, independent of the signal; None: an exact copy."""
    from src.interventions.counterfactual import dither

    u = _utt()
    d, noise = dither(u, snr, seed=5)
    added = d.audio.astype(np.float64) - u.audio.astype(np.float64)
    sig = u.audio.astype(np.float64)
    measured = 10 * math.log10(float((sig**2).sum()) / float((added**2).sum()))
    assert abs(measured - snr) < 0.01  # float32 rounding of the dithered audio only
    assert np.count_nonzero(added) > 0.99 * len(added)  # every sample, not only some words
    assert abs(float(np.corrcoef(noise, sig)[0, 1])) < 0.05  # independent of the signal
    assert np.array_equal(dither(u, snr, seed=5)[0].audio, d.audio)  # seeded
    assert not np.array_equal(dither(u, snr, seed=6)[1], noise)
    copy, zero = dither(u, None, seed=5)
    assert np.array_equal(copy.audio, u.audio) and not zero.any()


def test_noise_pairs_and_bad_positions():
    u = _utt()
    ps = noise_pairs(u, [1], snr=0.0, seeds=(0, 1))
    assert [p.meta["seed"] for p in ps] == [0, 1] and all(p.clean is u for p in ps)
    with pytest.raises(CounterfactualError, match=r"word position 3 is outside the utterance \(3 words"):
        add_noise(u, [3], 0.0, 0)


def test_nonspeech_clips():
    sr = 16000
    for kind in ("white", "pink", "brown", "tone", "chords"):
        c = nonspeech_clip(kind, duration=2.0, sample_rate=sr, seed=1, level_db=-20)
        assert len(c.audio) == 2 * sr and c.tier("words") == []
        rms_db = 20 * math.log10(math.sqrt(float(np.mean(c.audio.astype(np.float64) ** 2))))
        assert abs(rms_db + 20) < 0.05, kind
    assert not nonspeech_clip("silence").audio.any()
    # spectral slope of the noise colours (log power vs log frequency, 50 Hz - 4 kHz): 0, -1, -2
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        x = nonspeech_clip(kind, duration=4.0, sample_rate=sr, seed=2).audio.astype(np.float64)
        p = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / sr)
        band = (f > 50) & (f < 4000)
        fit = np.polyfit(np.log10(f[band]), np.log10(p[band]), 1)[0]
        assert abs(fit - slope) < 0.15, (kind, fit)
    with pytest.raises(CounterfactualError, match="not one of"):
        nonspeech_clip("speech")


class _Corpus:
    def __init__(self, utts):
        self.utts = utts
        self.ids = [u.id for u in utts]
        self.reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return self.utts[i]


def test_pairs_csv(tmp_path):
    sr = 16000
    mk = lambda uid, w: Utterance(uid, np.zeros(sr, np.float32), sr, tiers={"words": [  # noqa: E731
        Interval(0.1, 0.3, "the"), Interval(0.3, 0.5, w)]})
    corpus = _Corpus([mk("u1", "cat"), mk("u2", "dog"), mk("u3", "cow")])
    p = tmp_path / "pairs.csv"
    p.write_text("clean_id,corrupted_id,target,foil\nu1,u2, cat, dog\nu3,u1,,\n")
    pairs = read_pairs_csv(p, corpus)
    assert [(x.clean.id, x.corrupted.id, x.target, x.foil, x.differing) for x in pairs] == [
        ("u1", "u2", "cat", "dog", (1,)), ("u3", "u1", None, None, (1,))]
    p.write_text("clean_id,corrupted_id\nu1,u2\nu1,u9\n")
    corpus.reads = 0
    with pytest.raises(CounterfactualError, match=r"pairs.csv:3: corrupted_id 'u9' is not an utterance"):
        read_pairs_csv(p, corpus)
    assert corpus.reads == 0  # checked before any audio is read
    p.write_text("clean,corrupted\nu1,u2\n")
    with pytest.raises(CounterfactualError, match=r"missing column\(s\) \['clean_id', 'corrupted_id'\]"):
        read_pairs_csv(p, corpus)
    p.write_text("clean_id,corrupted_id,target\nu1,u2,cat\n")
    with pytest.raises(CounterfactualError, match="pairs.csv:2: give both target and foil"):
        read_pairs_csv(p, corpus)
