"""Probing tasks: turn (activation cache, corpus) into items with targets.

A task says which items are probed (frames, pooled segments) and what their target is
(a class label or a vector of track values).  Items keep the cache rows they read, their
utterance (for splits and bootstrap intervals) and a *type* key for control tasks.
All frame/label conventions come from :mod:`src.datamodules.alignment`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
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
    types_reason: str | None = None  # why no informative control type exists (selectivity is then refused)
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


def _encode(labels: np.ndarray, min_count: int, counts: dict, what: str = "task") -> tuple[np.ndarray, list[str], np.ndarray]:
    """Class index of each label (``-1``: a class with fewer than ``min_count`` items), the sorted
    classes kept, and the mask of kept items.  One sort of the labels (no per-item Python)."""
    labels = np.asarray(labels)
    uniq, inverse, freq = np.unique(labels, return_inverse=True, return_counts=True)  # sorted unique labels
    inverse = inverse.reshape(-1)
    kept = freq >= min_count  # (C_all,)
    keep = kept[inverse]  # (N,)
    if (~keep).any():
        counts["items_rare_class_dropped"] = int((~keep).sum())
        rare = [str(c) for c in uniq[~kept]]
        counts["rare_classes_dropped"] = len(rare)
        log.warning("%s: %d items of %d classes with fewer than %d items were dropped (%s%s); see task.min_count",
                    what, int((~keep).sum()), len(rare), min_count, ", ".join(rare[:10]), ", ..." if len(rare) > 10 else "")  # fmt: skip
    code = np.where(kept, np.cumsum(kept) - 1, -1)  # (C_all,) index among the kept classes
    return code[inverse].astype(np.int64), [str(c) for c in uniq[kept]], keep


class Task:
    name: str = "task"
    kind: str = "classification"

    def build(self, acts, corpus: Corpus, control_types: bool = False) -> ProbeData:
        """Items and targets of this task from the cache ``acts`` and the corpus annotations.

        ``control_types``: also compute each item's control-task type (``ProbeData.types``,
        or ``types_reason`` saying why none exists).  Off by default, because it reads the
        word tier of every utterance; a caller that measures selectivity must pass True.
        With False, ``types`` and ``types_reason`` are None.
        """
        raise NotImplementedError

    def required_tiers(self) -> list[str]:
        """Tiers every utterance must have (checked before extraction)."""
        return []

    def required_tracks(self) -> list[str]:
        return []

    def control_reason(self) -> str | None:
        """Why this task cannot have an informative control task (None: it can)."""
        return None

    def validate(self, corpus: Corpus, controls: dict | None = None) -> None:
        """Check the corpus has what this task needs, before any activation is extracted.

        Reads annotations only (cheap); raises CorpusError naming the utterance and tier.
        """
        reason = self.control_reason() if (controls or {}).get("selectivity") and self.kind == "classification" else None
        if reason:
            raise CorpusError(f"controls.selectivity=true: {reason}")
        skip = getattr(self, "on_missing", "error") == "skip"
        need = list(self.required_tiers())
        if (controls or {}).get("selectivity") and getattr(self, "control_type", None) == "word" \
                and getattr(self, "tier", None) != getattr(self, "word_tier", None):
            need.append(self.word_tier)
        have_any = {t: False for t in need}
        for u in range(len(corpus)):
            ann = corpus.annotation(u)
            for t in need:
                if t in ann.tiers:
                    have_any[t] = True
                elif not skip or t == getattr(self, "word_tier", None):
                    raise CorpusError(f"utterance {ann.id!r} ({ann.path or corpus.name}) has no tier {t!r} "
                                      f"needed by task={self.name}; it has {sorted(ann.tiers)}")  # fmt: skip
            for tr in self.required_tracks():
                if tr not in ann.tracks:
                    raise CorpusError(f"utterance {ann.id!r} ({ann.path or corpus.name}) has no track {tr!r} "
                                      f"needed by task={self.name}; it has {sorted(ann.tracks)}")  # fmt: skip
        missing = [t for t, ok in have_any.items() if not ok]
        if missing:
            raise CorpusError(f"no utterance of corpus {corpus.name!r} has tier(s) {missing} needed by task={self.name}")


class FrameClassification(Task):
    """Every frame inside a labelled interval of ``tier`` (e.g. frame-level phone classification).

    ``control_type`` (Hewitt & Liang control task types): ``word`` (default) makes a frame's
    type its word and the position of its phone interval within the word (``cat|1``), so
    the control label is not a function of the phone label; ``label`` (the phone itself)
    cannot make an informative control task and is refused when selectivity is asked for.
    """

    def __init__(self, name: str = "phones", tier: str = "phones", min_count: int = 1, on_missing: str = "error",
                 control_type: str = "word", word_tier: str = "words") -> None:  # fmt: skip
        if control_type not in {"word", "label"}:
            raise ValueError(f"task.control_type must be word or label, got {control_type!r}")
        self.name, self.tier, self.min_count, self.on_missing = name, tier, min_count, on_missing
        self.control_type, self.word_tier = control_type, word_tier

    def build(self, acts, corpus: Corpus, control_types: bool = False) -> ProbeData:
        it = frame_items(acts, corpus, self.tier, self.on_missing)
        y, classes, keep = _encode(it.labels, self.min_count, it.counts, self.name)
        types, reason = None, self.control_reason() if control_types else None
        if control_types and reason is None:
            types, reason = _word_position_types(acts, corpus, it.rows, it.utt, self.tier, self.word_tier)
        data = ProbeData(self.name, "classification", y, it.utt, [self.name], classes, rows=it.rows, types=types,
                         counts=it.counts, types_reason=reason)  # fmt: skip
        return data.subset(keep)

    def required_tiers(self) -> list[str]:
        return [self.tier]

    def control_reason(self) -> str | None:
        if self.control_type == "label":
            return (f"task.control_type=label makes each frame's control type its {self.tier!r} label, so the "
                    "control label is a function of the task label and selectivity <= 0 by construction; "
                    "use task.control_type=word")  # fmt: skip
        return None


def _utterance_blocks(utt: np.ndarray):
    """``(u, start, stop)`` for each run of equal utterance indices (items are grouped by utterance)."""
    if len(utt) == 0:
        return
    cut = np.flatnonzero(np.diff(utt)) + 1
    bounds = np.concatenate([[0], cut, [len(utt)]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        yield int(utt[a]), int(a), int(b)


def _word_position_types(acts, corpus: Corpus, rows: np.ndarray, utt: np.ndarray, tier: str, word_tier: str,
                         seg_start: np.ndarray | None = None):  # fmt: skip
    """Control type of each item: ``<word>|<index of its interval within the word>``.

    Items are frames (``rows``: the interval containing each frame's time) or segments
    (``seg_start``/``seg_end``: the interval itself).  The word is the interval of
    ``word_tier`` containing the phone's midpoint.  Returns ``(types, None)`` or
    ``(None, reason)`` when the word tier is missing (the reason names the utterance).
    Linear in the number of items: one pass over the utterance blocks; per utterance, the
    type of each of its P intervals is formatted once and the items index it (no per-item
    Python work).
    """
    from src.datamodules.alignment import frame_labels
    from src.datamodules.labels import label_norm_of

    norm = label_norm_of(corpus)
    out = np.empty(len(utt), dtype=object)
    for u, a, b in _utterance_blocks(utt):
        ann = corpus.annotation(u)
        if word_tier not in ann.tiers:
            return None, (f"the control task needs a {word_tier!r} tier (types = word + position), but utterance "
                          f"{ann.id!r} has none (tiers: {sorted(ann.tiers)})")  # fmt: skip
        ivs, words = ann.tier(tier), ann.tiers[word_tier]
        wlabels = norm.apply([w.label for w in words], word_tier)
        starts = np.array([iv.start for iv in ivs], dtype=np.float64)  # (P,) sorted
        mids = np.array([(iv.start + iv.end) / 2 for iv in ivs], dtype=np.float64)  # (P,)
        wi, _ = frame_labels(words, mids)  # (P,) word of each interval, -1: none
        wstart = np.array([w.start for w in words] or [0.0], dtype=np.float64)[np.maximum(wi, 0)]  # (P,)
        # index of each interval within its word: intervals starting in [word start, its start)
        k = np.searchsorted(starts, starts - 1e-9) - np.searchsorted(starts, wstart - 1e-9)  # (P,)
        kinds = np.empty(len(ivs), dtype=object)  # (P,) the type of each interval
        for p, (w, kp) in enumerate(zip(wi.tolist(), k.tolist())):
            if w < 0 or wlabels[w] is None:
                kinds[p] = f"<no word>|{norm.one(ivs[p].label, tier)}"
            else:
                kinds[p] = f"{wlabels[w]}|{kp}"
        if seg_start is None:
            pi, _ = frame_labels(ivs, acts.frame_times(u)[rows[a:b] - acts.offsets[u]])  # (n,) interval per frame
        else:
            pi = np.searchsorted(starts, seg_start[a:b] + 1e-9, side="right") - 1  # (n,)
        out[a:b] = kinds[pi]
    return out.astype(str), None


class SegmentClassification(Task):
    """One item per interval of ``tier``, pooled (``mean`` or ``center``); e.g. phone or word tokens.

    Control types: ``word`` (the word containing the segment and its position in it) when
    ``tier`` is not the word tier; for word tokens (``tier == word_tier``) no type is
    independent of the label, so selectivity is refused with the reason.
    """

    def __init__(self, name: str = "phone_tokens", tier: str = "phones", pool: str = "mean", min_count: int = 1,
                 on_missing: str = "error", control_type: str = "word", word_tier: str = "words") -> None:  # fmt: skip
        if control_type not in {"word", "label"}:
            raise ValueError(f"task.control_type must be word or label, got {control_type!r}")
        self.name, self.tier, self.pool, self.min_count, self.on_missing = name, tier, pool, min_count, on_missing
        self.control_type, self.word_tier = control_type, word_tier

    def build(self, acts, corpus: Corpus, control_types: bool = False) -> ProbeData:
        it = segment_items(acts, corpus, self.tier, self.pool, self.on_missing)
        y, classes, keep = _encode(it.labels, self.min_count, it.counts, self.name)
        types, reason = None, self.control_reason() if control_types else None
        if control_types and reason is None:
            types, reason = _word_position_types(acts, corpus, None, it.utt, self.tier, self.word_tier,
                                                 seg_start=it.start)  # fmt: skip
        data = ProbeData(self.name, "classification", y, it.utt, [self.name], classes, lo=it.lo, hi=it.hi,
                         types=types, extra={"context": it.context}, counts=it.counts, types_reason=reason)  # fmt: skip
        return data.subset(keep)

    def required_tiers(self) -> list[str]:
        return [self.tier]

    def control_reason(self) -> str | None:
        if self.control_type == "label" or self.tier == self.word_tier:
            return (f"task={self.name} predicts the {self.tier!r} label itself; a control type equal to the label "
                    "(or a function of it) gives control accuracy >= task accuracy by construction, so "
                    "selectivity cannot be measured for this task"
                    + ("" if self.tier == self.word_tier else "; use task.control_type=word"))  # fmt: skip
        return None


class StressClassification(Task):
    """Syllable-level lexical stress (stressed "1" vs unstressed "0").

    Stress comes from (``source``):

    - ``syllables``: a syllables tier labelled ``0``/``1``/``2``; a syllable's representation is
      pooled over its *nucleus* frames: the vowel intervals of ``nucleus_tier`` inside it;
    - ``digits``: the ARPAbet stress digit of each vowel of ``nucleus_tier`` (``AH0``, ``OW1``,
      ``ER2``: HPRC, MFA with an ARPAbet dictionary, the LibriSpeech alignments), read from the
      raw label before normalisation; one item per vowel carrying a digit, pooled over it
      (labels without a digit are not items; with ``task.vowels`` only those vowels count);
    - ``auto`` (default): ``syllables`` when any utterance has the syllables tier, else ``digits``.

    Each item also records the nucleus vowel's identity (``extra["vowel"]``): in Festival's lexicon stress is largely
    predictable from the vowel alone, so the pipeline reports a vowel-identity baseline.

    Labels ``0``/``1``; secondary stress ``2`` (as CMU-dict alignments give) becomes
    ``secondary`` (``1`` by default: stressed vs unstressed; ``0``; ``drop``; or ``error``),
    counted in the results.  Nucleus phone labels go through the run's label normalisation.
    """

    def __init__(self, name: str = "stress", tier: str = "syllables", nucleus_tier: str = "phones", pool: str = "mean",
                 on_missing: str = "error", vowels: list[str] | None = None, secondary: str = "1",
                 source: str = "auto") -> None:  # fmt: skip
        if source not in {"auto", "syllables", "digits"}:
            raise ValueError(f"task.source must be auto, syllables or digits; got {source!r}")
        self.source = source
        self.name, self.tier, self.nucleus_tier, self.pool, self.on_missing = name, tier, nucleus_tier, pool, on_missing
        self.vowels = set(vowels) if vowels else None  # None: the ARPAbet / Festival inventory of phones.py
        if str(secondary) not in {"0", "1", "drop", "error"}:
            raise ValueError(f"task.secondary must be 1, 0, drop or error (what secondary stress '2' becomes); got {secondary!r}")
        self.secondary = str(secondary)

    def required_tiers(self) -> list[str]:
        if getattr(self, "_resolved", self.source) == "digits":
            return [self.nucleus_tier]
        return [self.tier, self.nucleus_tier]

    def source_for(self, corpus: Corpus) -> str:
        """``syllables`` or ``digits``: ``auto`` is ``syllables`` when any utterance has ``self.tier``."""
        if self.source != "auto":
            return self.source
        has = any(self.tier in corpus.annotation(u).tiers for u in range(len(corpus)))
        return "syllables" if has else "digits"

    def validate(self, corpus: Corpus, controls: dict | None = None) -> None:
        self._resolved = self.source_for(corpus)
        try:
            super().validate(corpus, controls)
        finally:
            del self._resolved

    def _is_vowel(self, label: str) -> bool:
        from src.datamodules.phones import UnknownPhoneError, is_vowel

        if self.vowels is not None:
            return label in self.vowels
        try:
            return is_vowel(label)
        except UnknownPhoneError as e:
            raise CorpusError(f"{e}. For another phone set, list its vowels in task.vowels") from e

    def build(self, acts, corpus: Corpus, control_types: bool = False) -> ProbeData:
        """Control types (``control_types=True``) are the nucleus vowels (``extra["vowel"]``, always set)."""
        from src.datamodules.labels import label_norm_of

        norm = label_norm_of(corpus)
        counts: dict = {}
        lo_all, hi_all, lab, utt, vowel = [], [], [], [], []
        if self.source_for(corpus) == "digits":
            return self._build_digits(acts, corpus, norm, control_types)
        for u in range(len(corpus)):
            ann = corpus.annotation(u)
            if self.tier not in ann.tiers or self.nucleus_tier not in ann.tiers:
                if self.on_missing == "skip":
                    counts["utterances_missing_tier"] = counts.get("utterances_missing_tier", 0) + 1
                    continue
                ann.tier(self.tier), ann.tier(self.nucleus_tier)  # raises naming the utterance
            names = norm.apply([iv.label for iv in ann.tiers[self.nucleus_tier]], self.nucleus_tier, counts)
            phones = [(iv, n) for iv, n in zip(ann.tiers[self.nucleus_tier], names) if n is not None and self._is_vowel(n)]
            t = acts.frame_times(u)
            for syl in ann.tiers[self.tier]:
                label = norm._text(syl.label)
                if label == "2":
                    counts["syllables_secondary_stress"] = counts.get("syllables_secondary_stress", 0) + 1
                    if self.secondary == "error":
                        raise CorpusError(f"utterance {ann.id!r}: secondary stress '2' in tier {self.tier!r}; set "
                                          "task.secondary=1 (stressed), 0 or drop")  # fmt: skip
                    if self.secondary == "drop":
                        continue
                    label = self.secondary
                if label not in {"0", "1"}:
                    raise CorpusError(f"utterance {ann.id!r} ({ann.path or corpus.name}): stress label {syl.label!r} in "
                                      f"tier {self.tier!r} at {syl.start:.3f} s; expected 0, 1 (or 2, see task.secondary)")  # fmt: skip
                nuc = [(p, n) for p, n in phones if syl.start - 1e-6 <= p.start and p.end <= syl.end + 1e-6]
                if not nuc:
                    counts["syllables_without_vowel"] = counts.get("syllables_without_vowel", 0) + 1
                    continue
                lo, hi, ok = segment_frames([nuc[0][0]], t, self.pool, acts.frame_rate)
                if not ok[0]:
                    counts["segments_beyond_frames"] = counts.get("segments_beyond_frames", 0) + 1
                    continue
                lo_all.append(acts.offsets[u] + lo[0])
                hi_all.append(acts.offsets[u] + hi[0])
                lab.append(label)
                utt.append(u)
                vowel.append(nuc[0][1])
        if not lab:
            raise CorpusError(f"corpus {corpus.name!r}: no syllable with a vowel nucleus in tier {self.tier!r}")
        labels = np.array(lab)
        y, classes, _ = _encode(labels, 1, counts, self.name)
        return ProbeData(
            self.name, "classification", y, np.array(utt), [self.name], classes,
            lo=np.array(lo_all), hi=np.array(hi_all), types=np.array(vowel) if control_types else None, extra={"vowel": np.array(vowel)},
            counts=counts,
        )  # fmt: skip


    def _stress_label(self, digit: str, ann, where: str, counts: dict) -> str | None:
        if digit != "2":
            return digit
        counts["syllables_secondary_stress"] = counts.get("syllables_secondary_stress", 0) + 1
        if self.secondary == "error":
            raise CorpusError(f"utterance {ann.id!r}: secondary stress '2' in {where}; set task.secondary=1 "
                              "(stressed), 0 or drop")  # fmt: skip
        return None if self.secondary == "drop" else self.secondary

    def _build_digits(self, acts, corpus: Corpus, norm, control_types: bool) -> ProbeData:
        """One item per vowel of ``nucleus_tier`` whose raw label ends in a stress digit 0/1/2."""
        counts: dict = {}
        lo_all, hi_all, lab, utt, vowel = [], [], [], [], []
        seen: set[str] = set()
        for u in range(len(corpus)):
            ann = corpus.annotation(u)
            if self.nucleus_tier not in ann.tiers:
                if self.on_missing == "skip":
                    counts["utterances_missing_tier"] = counts.get("utterances_missing_tier", 0) + 1
                    continue
                ann.tier(self.nucleus_tier)  # raises naming the utterance
            ivs = ann.tiers[self.nucleus_tier]
            names = norm.apply([iv.label for iv in ivs], self.nucleus_tier, counts)
            t = acts.frame_times(u)
            for iv, name in zip(ivs, names):
                if name is None:
                    continue
                m = _STRESS_DIGIT.fullmatch(norm._text(iv.label))
                if len(seen) < 20:
                    seen.add(str(iv.label))
                if m is None:
                    continue
                mv = _STRESS_DIGIT.fullmatch(name)  # the vowel without its digit, whatever the tier's normalisation
                v = mv.group(1) if mv else name
                v = v.lower() if norm.case == "lower" else v.upper() if norm.case == "upper" else v
                if self.vowels is not None and v not in self.vowels and m.group(1) not in self.vowels:
                    counts["digit_labels_not_in_task_vowels"] = counts.get("digit_labels_not_in_task_vowels", 0) + 1
                    continue
                label = self._stress_label(m.group(2), ann, f"the {self.nucleus_tier!r} label {iv.label!r}", counts)
                if label is None:
                    continue
                lo, hi, ok = segment_frames([iv], t, self.pool, acts.frame_rate)
                if not ok[0]:
                    counts["segments_beyond_frames"] = counts.get("segments_beyond_frames", 0) + 1
                    continue
                lo_all.append(acts.offsets[u] + lo[0])
                hi_all.append(acts.offsets[u] + hi[0])
                lab.append(label)
                utt.append(u)
                vowel.append(v)
        if not lab:
            raise CorpusError(
                f"corpus {corpus.name!r}: task=stress found no vowel with an ARPAbet stress digit (0/1/2) in tier "
                f"{self.nucleus_tier!r} and no {self.tier!r} tier (labels seen: {sorted(seen)[:20]}); this corpus marks "
                "no lexical stress (TIMIT, Buckeye, mngu0, MOCHA phone labels carry none): give a syllables tier "
                "(task.tier) or alignments with an ARPAbet dictionary (MFA, HPRC)"
            )
        y, classes, _ = _encode(np.array(lab), 1, counts, self.name)
        return ProbeData(
            self.name, "classification", y, np.array(utt), [self.name], classes,
            lo=np.array(lo_all), hi=np.array(hi_all), types=np.array(vowel) if control_types else None,
            extra={"vowel": np.array(vowel)}, counts=counts,
        )  # fmt: skip


_STRESS_DIGIT = re.compile(r"(.*\D)([012])")  # an ARPAbet vowel with its stress digit: AH0, OW1, ER2


class TrackRegression(Task):
    """Frame-level regression on a continuous track (e.g. EMA), one target per channel."""

    kind = "regression"

    def __init__(self, name: str = "ema", track: str = "ema", channels: list[str] | None = None,
                 alignment: str = "interpolate") -> None:
        """alignment: ``interpolate`` (track values at each frame's time) or ``index`` (frame k <-> row k,
        the tutorial's convention; the track must be at the frame rate): :func:`alignment.track_values`."""
        from src.datamodules.alignment import TRACK_ALIGNMENTS

        if alignment not in TRACK_ALIGNMENTS:
            raise CorpusError(f"task.alignment must be one of {TRACK_ALIGNMENTS}, got {alignment!r}")
        self.name, self.track, self.channels, self.alignment = name, track, channels, alignment

    def required_tracks(self) -> list[str]:
        return [self.track]

    def build(self, acts, corpus: Corpus, control_types: bool = False) -> ProbeData:
        """Regression has no control task: ``control_types`` is accepted and ignored (types stay None)."""
        it = track_items(acts, corpus, self.track, channels=self.channels, alignment=self.alignment)
        return ProbeData(self.name, "regression", it.values, it.utt, list(it.names), rows=it.rows, counts=it.counts)


class UtteranceTask:
    """``task=commands``: utterance classification with one head per slot (train.py routes ``kind: utterance``
    tasks to the utterance-classifier job, src/jobs/utterance.py, instead of to the probes).

    Args:
        name: task name (run directories, results).
        heads: slots to classify (each utterance's :func:`~src.datamodules.commands.command_item`).
        layer: the state pooled (int / name / first|middle|last); ignored when ``weighted``.
        weighted: layer-weighted sum of all states.
        lr, weight_decay, max_epochs, patience, batch_size, standardize: :func:`src.probes.utterance.fit_classifier`.
        split_seed: the train/val/test split's seed, fixed across classifier seeds so that
            ``-m seed=0,1,2`` gives classifiers of the same test utterances.
    """

    kind = "utterance"

    def __init__(self, name: str = "commands", kind: str = "utterance", heads: Sequence[str] = ("action", "object", "location"),
                 layer: int | str | None = "last", weighted: bool = False, lr: float = 1e-2, weight_decay: float = 1e-3,
                 max_epochs: int = 300, patience: int = 30, batch_size: int = 64, standardize: bool = True,
                 split_seed: int = 0) -> None:  # fmt: skip
        if kind != "utterance":
            raise ValueError(f"task.kind must be 'utterance' for UtteranceTask, got {kind!r}")
        self.name, self.heads, self.layer, self.weighted = name, [str(h) for h in heads], layer, bool(weighted)
        self.fit_kw = dict(lr=float(lr), weight_decay=float(weight_decay), max_epochs=int(max_epochs),
                           patience=int(patience), batch_size=int(batch_size), standardize=bool(standardize))  # fmt: skip
        self.split_seed = int(split_seed)

    def labels(self, corpus) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
        """Classes per head (the corpus's slot inventory, else the sorted values seen) and each
        utterance's class index per head. An utterance without slots is an error naming it."""
        from src.datamodules.commands import command_item

        values: dict[str, list[str]] = {h: [] for h in self.heads}
        for i in range(len(corpus)):
            item = command_item(corpus, i)
            if item is None:
                raise CorpusError(f"task={self.name}: corpus {corpus.name!r} has no command slots (utterance "
                                      f"{corpus.ids[i]!r}); use data=commands or data=fsc")  # fmt: skip
            for h in self.heads:
                if h not in item.slots:
                    raise CorpusError(f"task={self.name}: utterance {item.utterance!r} has no slot {h!r} "
                                          f"(it has {sorted(item.slots)})")  # fmt: skip
                values[h].append(item.slots[h])
        inv = corpus.slot_classes() if hasattr(corpus, "slot_classes") else {}
        classes = {}
        for h in self.heads:
            classes[h] = list(inv[h]) if h in inv else sorted(set(values[h]))
            unknown = sorted(set(values[h]) - set(classes[h]))
            if unknown:
                raise CorpusError(f"task={self.name}: head {h!r} values {unknown} are not in the corpus's classes")
            if len(classes[h]) < 2:
                raise CorpusError(f"task={self.name}: head {h!r} has a single class {classes[h]}")
        y = {h: np.array([classes[h].index(v) for v in values[h]], np.int64) for h in self.heads}
        return classes, y

    def validate(self, corpus, controls: dict | None = None) -> None:
        if controls and (controls.get("selectivity") or controls.get("mdl")):
            raise ValueError(f"task={self.name}: controls.selectivity / controls.mdl are probing controls; the "
                                  "utterance classifier's control is the randomised-head / random-backbone one")  # fmt: skip
        self.labels(corpus)
