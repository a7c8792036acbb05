"""Probing tasks: turn (activation cache, corpus) into items with targets.

A task says which items are probed (frames, pooled segments) and what their target is
(a class label or a vector of track values).  Items keep the cache rows they read, their
utterance (for splits and bootstrap intervals) and a *type* key for control tasks.
All frame/label conventions come from :mod:`src.datamodules.alignment`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from src.datamodules.alignment import frame_items, gather, pool, segment_frames, segment_items, track_items
from src.datamodules.corpus import Corpus, CorpusError

log = logging.getLogger(__name__)


@dataclass
class ProbeData:
    """Items of one task.  Classification: ``y`` (N,) int into ``classes``; regression: ``y`` (N, K)."""

    task: str
    kind: str  # classification | regression
    y: np.ndarray
    utt: np.ndarray  # (N,) utterance index into the corpus / cache
    target_names: list[str]
    classes: list[str] = field(default_factory=list)
    rows: np.ndarray | None = None  # (N,) frame rows, or
    lo: np.ndarray | None = None  # (N,) segment rows [lo, hi), mean-pooled
    hi: np.ndarray | None = None
    types: np.ndarray | None = None  # (N,) str: the type each item is an instance of (control tasks)
    extra: dict = field(default_factory=dict)  # per-item arrays, e.g. vowel identity for stress
    counts: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def features(self, layer_array: np.ndarray, dtype=np.float32) -> np.ndarray:
        """``(N, D)`` features of every item from one layer of the cache."""
        if self.rows is not None:
            return gather(layer_array, self.rows, dtype)
        return pool(layer_array, self.lo, self.hi, dtype)

    def subset(self, mask: np.ndarray) -> ProbeData:
        sel = lambda a: None if a is None else a[mask]  # noqa: E731
        return replace(
            self,
            y=self.y[mask],
            utt=self.utt[mask],
            rows=sel(self.rows),
            lo=sel(self.lo),
            hi=sel(self.hi),
            types=sel(self.types),
            extra={k: v[mask] for k, v in self.extra.items()},
            counts=dict(self.counts),
        )


def _encode(labels: np.ndarray, min_count: int, counts: dict) -> tuple[np.ndarray, list[str], np.ndarray]:
    freq = Counter(labels.tolist())
    classes = sorted(c for c, n in freq.items() if n >= min_count)
    keep = np.isin(labels, classes)
    if (~keep).any():
        counts["items_rare_class_dropped"] = int((~keep).sum())
    lut = {c: i for i, c in enumerate(classes)}
    return np.array([lut.get(x, -1) for x in labels], dtype=np.int64), classes, keep


class Task:
    name: str = "task"
    kind: str = "classification"

    def build(self, acts, corpus: Corpus) -> ProbeData:
        raise NotImplementedError


class FrameClassification(Task):
    """Every frame inside a labelled interval of ``tier`` (e.g. frame-level phone classification)."""

    def __init__(self, name: str = "phones", tier: str = "phones", min_count: int = 1, on_missing: str = "error",
                 control_type: str = "label") -> None:  # fmt: skip
        self.name, self.tier, self.min_count, self.on_missing = name, tier, min_count, on_missing
        self.control_type = control_type

    def build(self, acts, corpus: Corpus) -> ProbeData:
        it = frame_items(acts, corpus, self.tier, self.on_missing)
        y, classes, keep = _encode(it.labels, self.min_count, it.counts)
        types = it.labels
        if self.control_type == "word":
            types = _word_position_types(acts, corpus, it.rows, it.utt, self.tier)
        data = ProbeData(self.name, "classification", y, it.utt, [self.name], classes, rows=it.rows, types=types,
                         counts=it.counts)  # fmt: skip
        return data.subset(keep)


def _word_position_types(acts, corpus: Corpus, rows: np.ndarray, utt: np.ndarray, tier: str) -> np.ndarray:
    """Type of a frame for control tasks: (word label, index of its interval within the word)."""
    from src.datamodules.alignment import frame_labels

    out = np.empty(len(rows), dtype=object)
    for u in np.unique(utt):
        ann = corpus.annotation(int(u))
        ivs, words = ann.tier(tier), ann.tiers.get("words", [])
        t = acts.frame_times(int(u))
        pi, _ = frame_labels(ivs, t)
        wi, _ = frame_labels(words, t)
        sel = np.flatnonzero(utt == u)
        local = rows[sel] - acts.offsets[int(u)]
        starts = np.array([iv.start for iv in ivs])  # (P,) sorted
        types: dict[tuple[int, int], str] = {}  # (word, phone interval) -> type: once per interval, not per frame
        for s, f in zip(sel, local):
            key = (int(wi[f]), int(pi[f]))
            if key not in types:
                w, p = key
                if w < 0:
                    types[key] = f"<none>|{ivs[p].label}"
                else:  # index of the phone within its word: intervals starting in [word start, phone start)
                    k = int(np.searchsorted(starts, ivs[p].start) - np.searchsorted(starts, words[w].start))
                    types[key] = f"{words[w].label}|{k}"
            out[s] = types[key]
    return out.astype(str)


class SegmentClassification(Task):
    """One item per interval of ``tier``, pooled (``mean`` or ``center``); e.g. phone or word tokens."""

    def __init__(self, name: str = "phone_tokens", tier: str = "phones", pool: str = "mean", min_count: int = 1,
                 on_missing: str = "error") -> None:  # fmt: skip
        self.name, self.tier, self.pool, self.min_count, self.on_missing = name, tier, pool, min_count, on_missing

    def build(self, acts, corpus: Corpus) -> ProbeData:
        it = segment_items(acts, corpus, self.tier, self.pool, self.on_missing)
        y, classes, keep = _encode(it.labels, self.min_count, it.counts)
        data = ProbeData(self.name, "classification", y, it.utt, [self.name], classes, lo=it.lo, hi=it.hi,
                         types=it.labels, extra={"context": it.context}, counts=it.counts)  # fmt: skip
        return data.subset(keep)


class StressClassification(Task):
    """Syllable-level lexical stress (stressed "1" vs unstressed "0").

    A syllable's representation is pooled over its *nucleus* frames: the vowel intervals
    of ``nucleus_tier`` that lie inside the syllable.  Each item also records the nucleus
    vowel's identity (``extra["vowel"]``): in Festival's lexicon stress is largely
    predictable from the vowel alone, so the pipeline reports a vowel-identity baseline.
    """

    def __init__(self, name: str = "stress", tier: str = "syllables", nucleus_tier: str = "phones", pool: str = "mean",
                 on_missing: str = "error", vowels: list[str] | None = None) -> None:  # fmt: skip
        self.name, self.tier, self.nucleus_tier, self.pool, self.on_missing = name, tier, nucleus_tier, pool, on_missing
        self.vowels = set(vowels) if vowels else None  # None: the ARPAbet / Festival inventory of phones.py

    def _is_vowel(self, label: str) -> bool:
        from src.datamodules.phones import UnknownPhoneError, is_vowel

        if self.vowels is not None:
            return label in self.vowels
        try:
            return is_vowel(label)
        except UnknownPhoneError as e:
            raise CorpusError(f"{e}. For another phone set, list its vowels in task.vowels") from e

    def build(self, acts, corpus: Corpus) -> ProbeData:
        counts: dict = {}
        lo_all, hi_all, lab, utt, vowel = [], [], [], [], []
        for u in range(len(corpus)):
            ann = corpus.annotation(u)
            if self.tier not in ann.tiers or self.nucleus_tier not in ann.tiers:
                if self.on_missing == "skip":
                    counts["utterances_missing_tier"] = counts.get("utterances_missing_tier", 0) + 1
                    continue
                ann.tier(self.tier), ann.tier(self.nucleus_tier)  # raises naming the utterance
            phones = [iv for iv in ann.tiers[self.nucleus_tier] if self._is_vowel(iv.label)]
            t = acts.frame_times(u)
            for syl in ann.tiers[self.tier]:
                nuc = [p for p in phones if syl.start - 1e-6 <= p.start and p.end <= syl.end + 1e-6]
                if not nuc:
                    counts["syllables_without_vowel"] = counts.get("syllables_without_vowel", 0) + 1
                    continue
                lo, hi, ok = segment_frames(nuc[:1], t, self.pool, acts.frame_rate)
                if not ok[0]:
                    counts["segments_beyond_frames"] = counts.get("segments_beyond_frames", 0) + 1
                    continue
                lo_all.append(acts.offsets[u] + lo[0])
                hi_all.append(acts.offsets[u] + hi[0])
                lab.append(syl.label)
                utt.append(u)
                vowel.append(nuc[0].label)
        if not lab:
            raise CorpusError(f"corpus {corpus.name!r}: no syllable with a vowel nucleus in tier {self.tier!r}")
        labels = np.array(lab)
        bad = ~np.isin(labels, ["0", "1"])
        if bad.any():
            raise CorpusError(f"stress labels must be '0' or '1' in tier {self.tier!r}; found {sorted(set(labels[bad]))}")
        y, classes, _ = _encode(labels, 1, counts)
        return ProbeData(
            self.name, "classification", y, np.array(utt), [self.name], classes,
            lo=np.array(lo_all), hi=np.array(hi_all), types=np.array(vowel), extra={"vowel": np.array(vowel)},
            counts=counts,
        )  # fmt: skip


class TrackRegression(Task):
    """Frame-level regression on a continuous track (e.g. EMA), one target per channel."""

    kind = "regression"

    def __init__(self, name: str = "ema", track: str = "ema", channels: list[str] | None = None) -> None:
        self.name, self.track, self.channels = name, track, channels

    def build(self, acts, corpus: Corpus) -> ProbeData:
        it = track_items(acts, corpus, self.track)
        names = list(it.names)
        values = it.values
        if self.channels:
            missing = [c for c in self.channels if c not in names]
            if missing:
                raise CorpusError(f"track {self.track!r} has no channels {missing}; it has {names}")
            values = values[:, [names.index(c) for c in self.channels]]
            names = list(self.channels)
        return ProbeData(self.name, "regression", values, it.utt, names, rows=it.rows, counts=it.counts)
