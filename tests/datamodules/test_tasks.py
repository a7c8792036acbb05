"""Tasks and splits on the tone corpus: items, labels, control types, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from src.activations import ActivationCache
from src.backbones.features import SpectralBaseline
from src.datamodules.alignment import frame_labels
from src.datamodules.corpus import CorpusError, TextGridCorpus
from src.datamodules.splits import SplitError, split_utterances
from src.datamodules.tasks import (
    FrameClassification,
    SegmentClassification,
    StressClassification,
    TrackRegression,
)


@pytest.fixture(scope="module")
def setup(tone_corpus_dir, tmp_path_factory):
    corpus = TextGridCorpus(tone_corpus_dir)
    acts = ActivationCache(tmp_path_factory.mktemp("cache"), dtype="float32", progress=False).get(
        SpectralBaseline("mfcc"), corpus
    )
    return corpus, acts


def test_frame_task_matches_alignment_by_hand(setup):
    corpus, acts = setup
    data = FrameClassification(min_count=1).build(acts, corpus)
    # recount utterance 0 by hand with the alignment convention
    ivs = corpus.annotation(0).tier("phones")
    idx, ok = frame_labels(ivs, acts.frame_times(0))
    sel = data.utt == 0
    assert sel.sum() == ok.sum()
    assert [data.classes[i] for i in data.y[sel]] == [ivs[i].label for i in idx[ok]]
    np.testing.assert_array_equal(data.rows[sel], acts.offsets[0] + np.flatnonzero(ok))
    np.testing.assert_array_equal(data.features(acts.layer(0))[sel], acts.frames(0, 0)[ok])


def test_control_types_only_when_asked(setup):
    """types/types_reason are computed only with control_types=True; every other field is the same."""
    corpus, acts = setup
    for task in (FrameClassification(min_count=1), SegmentClassification(min_count=1),
                 StressClassification(vowels=["a", "i", "o"])):  # fmt: skip
        off, on = task.build(acts, corpus), task.build(acts, corpus, control_types=True)
        assert off.types is None and off.types_reason is None
        assert on.types is not None and len(on.types) == len(on.y)
        for f in ("y", "utt", "rows", "lo", "hi"):
            a, b = getattr(off, f), getattr(on, f)
            assert (a is None and b is None) or np.array_equal(a, b), f
        assert off.classes == on.classes and off.counts == on.counts
    words = SegmentClassification(name="words", tier="words", min_count=1)
    assert words.build(acts, corpus).types_reason is None
    assert "predicts the 'words' label itself" in words.build(acts, corpus, control_types=True).types_reason


def test_word_position_control_types(setup):
    corpus, acts = setup
    data = FrameClassification(min_count=1, control_type="word").build(acts, corpus, control_types=True)
    # every type is "<word>|<phone index within the word>"; frames of one phone share a type
    assert all("|" in t for t in data.types)
    u0 = data.utt == 0
    words = corpus.annotation(0).tier("words")
    assert {t.split("|")[0] for t in data.types[u0]} <= {w.label for w in words} | {"<no word>"}
    # literally: the phone's index among the phone intervals starting inside its word
    ivs = corpus.annotation(0).tier("phones")
    t = acts.frame_times(0)
    pi, _ = frame_labels(ivs, t)
    wi, _ = frame_labels(words, t)
    for typ, f in zip(data.types[u0], data.rows[u0] - acts.offsets[0]):
        w, p = wi[f], pi[f]
        expected = (f"<no word>|{ivs[p].label}" if w < 0 else
                    f"{words[w].label}|{sum(1 for iv in ivs if words[w].start <= iv.start < ivs[p].start)}")  # fmt: skip
        assert typ == expected


def test_rare_classes_dropped_and_counted(setup):
    corpus, acts = setup
    full = FrameClassification(min_count=1).build(acts, corpus)
    counts = np.bincount(full.y)
    threshold = int(np.median(counts))
    rare = counts < threshold
    assert 0 < rare.sum() < len(counts)
    data = FrameClassification(min_count=threshold).build(acts, corpus)
    assert data.classes == [c for c, r in zip(full.classes, rare) if not r]
    assert data.counts["items_rare_class_dropped"] == int(counts[rare].sum())


def test_segment_and_stress_items(setup):
    corpus, acts = setup
    seg = SegmentClassification(tier="phones", min_count=1).build(acts, corpus)
    n_ivs = sum(len(corpus.annotation(u).tier("phones")) for u in range(len(corpus)))
    assert len(seg) == n_ivs
    st = StressClassification(vowels=["a", "i", "o"]).build(acts, corpus)
    assert set(st.classes) <= {"0", "1"}
    assert set(st.extra["vowel"]) <= {"a", "i", "o"}
    with pytest.raises(CorpusError, match="task.vowels"):
        StressClassification().build(acts, corpus)  # tone phones are not ARPAbet


def test_missing_tier_error_or_skip(setup):
    corpus, acts = setup
    with pytest.raises(CorpusError, match="no tier 'nope'"):
        FrameClassification(tier="nope").build(acts, corpus)
    with pytest.raises(CorpusError, match="no utterance"):
        FrameClassification(tier="nope", on_missing="skip").build(acts, corpus)


def test_track_task_masks_nan(setup):
    corpus, acts = setup
    data = TrackRegression().build(acts, corpus)
    assert data.y.shape[1] == 2 and not np.isnan(data.y).any()
    assert data.target_names == ["tongue_x", "jaw_y"]
    with pytest.raises(CorpusError, match="no channels"):
        TrackRegression(channels=["lip"]).build(acts, corpus)


def test_splits_disjoint_and_speaker_disjoint(setup):
    corpus, _ = setup
    for by in ("utterance", "text"):
        s = split_utterances(corpus, by=by, val_fraction=0.25, test_fraction=0.25)
        allx = np.concatenate(list(s.values()))
        assert sorted(allx) == list(range(len(corpus)))
    s = split_utterances(corpus, by="speaker", test_speakers=["spk2"], val_fraction=0.25)
    assert {corpus.speaker(int(i)) for i in s["test"]} == {"spk2"}
    assert "spk2" not in {corpus.speaker(int(i)) for i in np.concatenate([s["train"], s["val"]])}
    with pytest.raises(SplitError, match="not in corpus"):
        split_utterances(corpus, by="speaker", test_speakers=["nobody"])
