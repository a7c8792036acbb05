"""The vectorised set-up code (label encoding, frame labels, control types, label normalisation)
gives exactly what the literal per-item loops it replaced give.

The references below are the per-item Python loops of the earlier per-item code (kept only
here), run on random annotations with the awkward cases: frames in no interval, silence
phones and words, phones outside every word, rare classes, utterances without frames.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from src.datamodules.alignment import frame_items, frame_labels
from src.datamodules.corpus import Corpus, Interval, Utterance
from src.datamodules.labels import LabelNormalization, label_norm_of
from src.datamodules.tasks import FrameClassification, SegmentClassification, _encode

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


PHONES = ["aa", "AH1", "b", "sil", "d", "eh", "sp", "k", "zh"]
WORDS = ["cat", "dog", "<sil>", "Sit", "x"]


class _Corpus(Corpus):
    name = "random_annotations"

    def __init__(self, utts):
        self.utts = utts

    def __len__(self):
        return len(self.utts)

    def __getitem__(self, i):
        return self.utts[i]

    @property
    def ids(self):
        return [u.id for u in self.utts]


class _Acts:
    frame_rate, frame_offset, path = 50.0, 0.01, "<fake>"

    def __init__(self, lengths, ids):
        self.ids = ids
        self.lengths = np.asarray(lengths)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])

    def frame_times(self, u):
        return self.frame_offset + np.arange(int(self.lengths[u])) / self.frame_rate


def random_corpus(n_utts=40, seed=0):
    rng = np.random.default_rng(seed)
    utts, lengths = [], []
    for u in range(n_utts):
        t, phones, words = float(rng.uniform(0, 0.1)), [], []
        for _ in range(int(rng.integers(0, 5))):
            w0 = t
            for _ in range(int(rng.integers(1, 4))):
                d = float(rng.choice([0.005, 0.03, 0.07, 0.12]))  # some shorter than a frame
                phones.append(Interval(t, t + d, str(rng.choice(PHONES))))
                t += d
            if rng.random() < 0.8:  # some phones belong to no word
                words.append(Interval(w0, t, str(rng.choice(WORDS))))
            t += float(rng.choice([0.0, 0.04]))  # pauses: frames in no interval
        utts.append(Utterance(f"u{u}", np.zeros(0, np.float32), 16000, "s", "", {"phones": phones, "words": words}))
        lengths.append(int(rng.integers(0, 3)) if rng.random() < 0.1 else int(t * 50) + int(rng.integers(0, 4)))
    corpus = _Corpus(utts)
    return corpus, _Acts(lengths, corpus.ids)


# ------------------------------------------------------------------ literal references (the old loops)


def literal_encode(labels, min_count, counts):
    freq = Counter(labels.tolist())
    classes = sorted(c for c, n in freq.items() if n >= min_count)
    keep = np.isin(labels, classes)
    if (~keep).any():
        counts["items_rare_class_dropped"] = int((~keep).sum())
        counts["rare_classes_dropped"] = len([c for c, n in freq.items() if n < min_count])
    lut = {c: i for i, c in enumerate(classes)}
    return np.array([lut.get(x, -1) for x in labels], dtype=np.int64), classes, keep


def literal_frame_items(acts, corpus, tier):
    norm = label_norm_of(corpus)
    rows, labels, utt = [], [], []
    for u in range(len(corpus)):
        ivs = corpus.annotation(u).tiers[tier]
        if not ivs:
            continue
        idx, ok = frame_labels(ivs, acts.frame_times(u))
        labs = norm.apply([iv.label for iv in ivs], tier)
        for f in range(len(idx)):
            if ok[f] and labs[idx[f]] is not None:
                rows.append(acts.offsets[u] + f)
                labels.append(labs[idx[f]])
                utt.append(u)
    return np.array(rows, dtype=np.int64), np.array(labels, dtype=str), np.array(utt, dtype=np.int64)


def literal_types(acts, corpus, rows, utt, tier, word_tier, seg_start=None):
    """Per item: find its phone interval, the word containing the phone's midpoint, count the
    phones starting inside the word before it (the old per-item loop)."""
    norm = label_norm_of(corpus)
    out = []
    for j in range(len(utt)):
        u = int(utt[j])
        ann = corpus.annotation(u)
        ivs, words = ann.tiers[tier], ann.tiers[word_tier]
        if seg_start is None:
            t = acts.frame_times(u)[rows[j] - acts.offsets[u]]
            p = max(i for i, iv in enumerate(ivs) if iv.start <= t)
        else:
            p = max(i for i, iv in enumerate(ivs) if iv.start <= seg_start[j] + 1e-9)
        mid = (ivs[p].start + ivs[p].end) / 2
        w = [i for i, wd in enumerate(words) if wd.start <= mid < wd.end]
        wlabel = norm.one(words[w[-1]].label, word_tier) if w else None
        if wlabel is None:
            out.append(f"<no word>|{norm.one(ivs[p].label, tier)}")
        else:
            ws = words[w[-1]].start
            out.append(f"{wlabel}|{sum(1 for iv in ivs if ws - 1e-9 <= iv.start < ivs[p].start - 1e-9)}")
    return np.array(out, dtype=str)


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("min_count", [1, 3, 50])
def test_encode_equals_the_counter_loop(min_count):
    rng = np.random.default_rng(min_count)
    labels = np.array([f"c{int(k)}" for k in rng.zipf(1.6, 600) % 40] + ["é", "e\u0301", "Z", "a"], dtype=str)
    c1, c2 = {}, {}
    y, classes, keep = _encode(labels, min_count, c1)
    y_ref, classes_ref, keep_ref = literal_encode(labels, min_count, c2)
    assert classes == classes_ref and c1 == c2
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(keep, keep_ref)
    assert y.dtype == np.int64 and (y[~keep] == -1).all()
    if min_count == 1:  # a literal value: every label is a class, codes follow the sorted order
        assert c1 == {} and classes[:2] == ["Z", "a"] and y[-1] == classes.index("a")


def test_encode_of_no_items():
    y, classes, keep = _encode(np.array([], dtype=str), 1, {})
    assert len(y) == 0 and classes == [] and len(keep) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_items_equal_the_per_frame_loop(seed):
    corpus, acts = random_corpus(seed=seed)
    it = frame_items(acts, corpus, "phones", on_missing="error")
    rows, labels, utt = literal_frame_items(acts, corpus, "phones")
    assert len(rows) > 100  # the random corpus has frames to compare
    np.testing.assert_array_equal(it.rows, rows)
    np.testing.assert_array_equal(it.labels, labels)
    np.testing.assert_array_equal(it.utt, utt)
    assert "sil" not in set(it.labels) and "ah" in set(it.labels)  # silences dropped, stress stripped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frame_control_types_equal_the_per_item_loop(seed):
    corpus, acts = random_corpus(seed=seed)
    data = FrameClassification(min_count=1).build(acts, corpus, control_types=True)
    ref = literal_types(acts, corpus, data.rows, data.utt, "phones", "words")
    np.testing.assert_array_equal(data.types, ref)
    assert data.types.dtype.kind == "U" and any(t.startswith("<no word>|") for t in ref)
    assert any(t.endswith("|2") for t in ref)  # third phone of a word


@pytest.mark.parametrize("seed", [0, 1])
def test_segment_control_types_equal_the_per_item_loop(seed):
    from src.datamodules.alignment import segment_items

    corpus, acts = random_corpus(seed=seed)
    data = SegmentClassification(min_count=1).build(acts, corpus, control_types=True)
    it = segment_items(acts, corpus, "phones", "mean")
    ref = literal_types(acts, corpus, None, it.utt, "phones", "words", seg_start=it.start)
    np.testing.assert_array_equal(data.types, ref)


def test_label_normalisation_memo_changes_nothing():
    """Labels are normalised through a memo; results and counts are those of ``one`` per label, every call."""
    norm = LabelNormalization(strip_stress_tiers=["phones"])
    labels = ["AH1", "sil", " b ", "e\u0301", "AH1", "", "k"]
    expected = [norm.one(x, "phones") for x in labels]
    assert expected == ["ah", None, "b", "é", "ah", None, "k"]  # literal
    for _ in range(3):  # memo cold, then warm
        counts: dict = {}
        assert norm.apply(labels, "phones", counts) == expected
        assert counts == {"labels_phones_silence_dropped": 2, "labels_phones_changed": 4}
    # the same label on another tier is normalised for that tier (no stress stripping on words)
    assert norm.apply(["AH1"], "words") == ["ah1"]
    assert norm == LabelNormalization(strip_stress_tiers=["phones"])  # the memo is not part of equality
