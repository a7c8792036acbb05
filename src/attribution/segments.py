"""Segments of an utterance (words, phones, fixed windows, frames) and segment scores.

Conventions (tested on hand-made alignments in tests/attribution/test_segments.py):

- **Cover.** The segments of an utterance tile ``[0, duration]`` with no overlap and no gap:
  the intervals of the tier in order, and every stretch the tier leaves uncovered (before the
  first interval, between two intervals, after the last one) becomes its own silence segment.
  Intervals whose label is empty (or whitespace) are silences too.  Silences never merge with
  words: each has its own id ``[SIL]_0``, ``[SIL]_1``, ... in time order.
- **Ids.** A word whose label occurs once in the utterance has the word itself as id; a label
  that occurs several times gets ``<word>_<k>`` (``k`` = 0-based occurrence).  Ids are unique.
- **word_index.** For the words tier: the index of the interval among the tier's NON-EMPTY
  intervals, in order (0-based; the index ``CommandItem.slot_words`` uses); -1 for silences.
  For phones: the index among the non-silence phone intervals; windows and frames: the window
  index; -1 for silences.
- **Rounding rule (masks).** Sample or frame ``k`` of the attributed tensor stands for the time
  ``t_k`` of :meth:`AttributionTarget.step_times` (sample ``k``: ``k / sr``; a frame: its
  centre) and belongs to the segment with ``start <= t_k < end``; a time at or after the last
  end (the final sample / frame centre at exactly ``duration``) belongs to the last segment,
  except in padded representations (Whisper log-mel and CNN features span a 30 s window), where
  steps whose time is ``>= duration`` are padding and get the extra index ``n_segments``
  (ablated as one more group by perturbation methods, ignored by :func:`segment_scores`).
- **Errors.** An interval that ends after the audio (more than ``tolerance`` = 10 ms), an
  interval that starts before 0 or ends before it starts, overlapping intervals, and a tier
  without any non-empty interval are :class:`SegmentError` naming the utterance and interval.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from src.datamodules.labels import SILENCE_LABELS

SEGMENT_KINDS = ("words", "phones", "windows", "frames")
REDUCTIONS = ("mean", "sum", "l2")
SIL = "[SIL]"
# the project's one silence list (a phone labelled "silence" is not a silence: labels.py)
PHONE_SILENCES = frozenset(SILENCE_LABELS)


class SegmentError(ValueError):
    """Bad alignment for segments (empty tier, beyond the audio, overlaps); names the utterance."""


@dataclass
class Segments:
    """Segments tiling ``[0, duration]`` of one utterance (see the module conventions).

    ``start`` / ``end`` in seconds; ``is_word`` False for silences and gaps; ``word_index``
    indexes the tier's non-empty intervals (-1 for silences); ``kind`` words | phones |
    windows | frames; ``duration`` of the audio in seconds.
    """

    ids: list[str]
    labels: list[str]
    start: np.ndarray
    end: np.ndarray
    is_word: np.ndarray
    word_index: np.ndarray
    kind: str = "words"
    duration: float = 0.0
    utterance: str = "?"

    def __len__(self) -> int:
        return len(self.ids)

    def index_of_times(self, times: np.ndarray, padded: bool = False) -> np.ndarray:
        """Segment index of each time (seconds), by the rounding rule: ``start <= t < end``; times at or
        after the end go to the last segment, or to ``len(self)`` (padding) when ``padded``."""
        times = np.asarray(times, dtype=np.float64)
        idx = np.searchsorted(self.start, times, side="right") - 1  # last segment starting at or before t
        idx = np.clip(idx, 0, len(self) - 1)
        if padded:
            idx = np.where(times >= self.duration, len(self), idx)
        return idx.astype(np.int64)


def _unique_ids(labels: list[str], is_word: list[bool]) -> list[str]:
    counts = Counter(lab for lab, w in zip(labels, is_word) if w)
    seen: Counter = Counter()
    out, n_sil = [], 0
    for lab, w in zip(labels, is_word):
        if not w:
            out.append(f"{SIL}_{n_sil}")
            n_sil += 1
        elif counts[lab] > 1:
            out.append(f"{lab}_{seen[lab]}")
            seen[lab] += 1
        else:
            out.append(lab)
    # a word spelled like a generated id ("the_0" next to two "the"s): disambiguate, ids must be unique
    taken: Counter = Counter()
    final = []
    for i in out:
        taken[i] += 1
        final.append(i if taken[i] == 1 else f"{i}#{taken[i] - 1}")
    return final


def _from_intervals(intervals, duration: float, utt_id: str, tier: str, silence, tolerance: float, kind: str) -> Segments:
    if not intervals:
        raise SegmentError(f"utterance {utt_id!r}: the {tier} tier is empty; word/phone segments need an alignment")
    labels, starts, ends, is_word, windex = [], [], [], [], []
    pos, k = 0.0, 0
    prev_label = None
    for j, iv in enumerate(intervals):
        s, e, lab = float(iv.start), float(iv.end), str(iv.label).strip()
        if s < -tolerance or e < s:
            raise SegmentError(f"utterance {utt_id!r}: {tier} interval {j} ({lab!r}, {s:.4f}-{e:.4f} s) is invalid")
        if s < pos - 1e-9:
            raise SegmentError(f"utterance {utt_id!r}: {tier} interval {j} ({lab!r}, {s:.4f}-{e:.4f} s) overlaps "
                               f"the previous one ({prev_label!r}, ends {pos:.4f} s)")  # fmt: skip
        if e > duration + tolerance:
            raise SegmentError(f"utterance {utt_id!r}: {tier} interval {j} ({lab!r}, {s:.4f}-{e:.4f} s) ends beyond "
                               f"the audio ({duration:.4f} s)")  # fmt: skip
        s, e = max(0.0, s), min(e, duration)
        if s > pos + 1e-9:  # a gap: its own silence segment
            labels.append(SIL), starts.append(pos), ends.append(s), is_word.append(False), windex.append(-1)
        if e <= s:  # zero-length interval (after clipping): no step can belong to it
            if not silence(lab):
                k += 1
            pos = max(pos, e)
            continue
        sil = silence(lab)
        labels.append(SIL if sil else lab)
        starts.append(s)
        ends.append(e)
        is_word.append(not sil)
        windex.append(-1 if sil else k)
        if not sil:
            k += 1
        pos, prev_label = e, lab
    if k == 0:
        raise SegmentError(f"utterance {utt_id!r}: the {tier} tier has no non-empty interval (only silences)")
    if duration > pos + 1e-9:
        labels.append(SIL), starts.append(pos), ends.append(duration), is_word.append(False), windex.append(-1)
    return Segments(_unique_ids(labels, is_word), labels, np.array(starts), np.array(ends), np.array(is_word, bool),
                    np.array(windex, np.int64), kind=kind, duration=float(duration), utterance=utt_id)  # fmt: skip


def _windows(duration: float, window: float, utt_id: str, kind: str) -> Segments:
    if window is None or not float(window) > 0:
        raise SegmentError(f"utterance {utt_id!r}: segments={kind} needs a window length > 0 s, got {window!r}")
    n = max(1, int(np.ceil(duration / float(window) - 1e-9)))
    starts = np.arange(n) * float(window)
    ends = np.minimum(starts + float(window), duration)
    labels = [f"{kind[:-1]}{i}" for i in range(n)]
    return Segments(labels, labels, starts, ends, np.ones(n, bool), np.arange(n), kind=kind, duration=float(duration),
                    utterance=utt_id)  # fmt: skip


def make_segments(utt, kind: str = "words", window: float | None = None, utt_id: str | None = None,
                  tolerance: float = 0.01, frame: float = 0.02) -> Segments:  # fmt: skip
    """Segments of an utterance (a ``src.datamodules.corpus.Utterance``).

    ``kind``: ``words`` (the words tier; LIME-WS, word leave-one-out), ``phones`` (the phones tier),
    ``windows`` (fixed windows of ``window`` s from 0, the last one shorter; LIME-TS) or ``frames``
    (windows of ``frame`` s, default 20 ms = one CNN frame).  See the module docstring for the rules.
    """
    uid = str(utt_id if utt_id is not None else getattr(utt, "id", "?"))
    duration = len(utt.audio) / float(utt.sample_rate)
    if kind not in SEGMENT_KINDS:
        raise SegmentError(f"segments must be one of {SEGMENT_KINDS}, got {kind!r}")
    if kind == "windows":
        return _windows(duration, window, uid, kind)
    if kind == "frames":
        return _windows(duration, window if window is not None else frame, uid, kind)
    tiers = getattr(utt, "tiers", {}) or {}
    if kind not in tiers:
        raise SegmentError(f"utterance {uid!r} has no {kind} tier (it has {sorted(tiers)}); segments={kind} needs one")
    if kind == "words":
        def silence(lab):
            return not lab.strip()
    else:
        def silence(lab):
            return lab.strip().lower() in PHONE_SILENCES
    return _from_intervals(list(tiers[kind]), duration, uid, kind, silence, tolerance, kind)


def segment_scores(raw, mask, n_segments: int, reduction: str = "mean") -> np.ndarray:
    """One score per segment: ``reduction`` over all elements (samples / frames AND features) whose mask is
    the segment's index.  ``raw`` and ``mask`` have the same shape (tensors or arrays); mask values
    ``>= n_segments`` (padding) are ignored.  ``mean``: sum / count; ``sum``; ``l2``: sqrt(sum of squares).
    A segment without any element (shorter than a step) scores NaN.  float64.
    """
    if reduction not in REDUCTIONS:
        raise SegmentError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    r = raw.detach().cpu().numpy() if hasattr(raw, "detach") else np.asarray(raw)
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if r.shape != m.shape:
        raise SegmentError(f"attribution shape {r.shape} != mask shape {m.shape}")
    r = np.real(r).astype(np.float64).ravel()
    m = m.astype(np.int64).ravel()
    keep = (m >= 0) & (m < n_segments)
    r, m = r[keep], m[keep]
    count = np.bincount(m, minlength=n_segments).astype(np.float64)
    if reduction == "l2":
        out = np.sqrt(np.bincount(m, weights=r * r, minlength=n_segments))
    else:
        out = np.bincount(m, weights=r, minlength=n_segments)
        if reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                out = out / count
    out[count == 0] = np.nan
    return out
