"""Frame <-> label alignment: the one place these conventions live.

Conventions (tested on hand-made alignments in tests/datamodules/test_alignment.py):

- **Frame time.**  Frame ``i`` of an utterance stands for ``t_i = frame_offset + i / frame_rate``
  seconds (the backbone defines both: Whisper and the spectral baselines 0 s; the
  wav2vec2 family the centre of the receptive field, 12.5 ms).
- **Frame labels.**  A frame takes the label of the interval with ``start <= t_i < end``;
  frames in no interval (pauses, outside the annotation) are unlabelled and left out.
- **Segments.**  An interval's frames are those with ``start <= t_i < end``.
  ``mean`` pools them; ``center`` takes the frame nearest the interval midpoint.  A
  segment shorter than a frame (no frame time inside) falls back to the nearest frame to
  its midpoint, so no segment is silently lost; a segment whose midpoint lies more than
  half a frame beyond the last frame is dropped (counted).
- **Tracks.**  Track sample ``j`` stands for ``j / rate`` s.  Values at frame times are
  linearly interpolated; frames more than half a track sample outside the track get NaN
  (masked downstream, counted), and NaNs in the track propagate.  ``alignment="index"``
  (``task.alignment=index``) is the tutorial's convention instead: frame ``k`` takes track row
  ``k`` (no frame offset, no interpolation), both cut to the shorter; the track must already be
  at the frame rate (a reader option such as ``data.ema_rate=50`` resamples it, by a named method).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from src.datamodules.corpus import Corpus, CorpusError, Interval, Track
from src.layers import frame_times  # noqa: F401  (the one frame-time formula; re-exported here)

log = logging.getLogger(__name__)


def _bounds(intervals: list[Interval]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.array([iv.start for iv in intervals], dtype=np.float64)
    ends = np.array([iv.end for iv in intervals], dtype=np.float64)
    if len(starts) > 1 and (np.diff(starts) < 0).any():
        raise CorpusError("intervals are not sorted by start time")
    return starts, ends


def frame_labels(intervals: list[Interval], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the index of the interval containing its time (``-1`` where none), and a mask."""
    if not intervals:
        return np.full(len(times), -1, dtype=np.int64), np.zeros(len(times), dtype=bool)
    starts, ends = _bounds(intervals)
    idx = np.searchsorted(starts, times, side="right") - 1  # last interval starting at or before t
    ok = idx >= 0
    ok[ok] = times[ok] < ends[idx[ok]]
    idx[~ok] = -1
    return idx, ok


FRAME_RULES = ("interval", "ceil_inclusive")


def segment_frames(
    intervals: list[Interval], times: np.ndarray, method: str = "mean", frame_rate: float | None = None,
    rule: str = "interval",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local frame ranges ``[lo, hi)`` per interval and a validity mask (see module conventions).

    ``rule`` (one of :data:`FRAME_RULES`) picks an interval's frames for ``method="mean"``:

    - ``"interval"`` (the framework's rule, the module conventions): frames with ``start <= t_i < end``;
      shorter than a frame: the frame nearest its midpoint.
    - ``"ceil_inclusive"`` (the context-mixing tutorial, Mohebbi et al. 2023,
      ``get_encoder_word_boundaries``): frames ``ceil(start * rate) .. ceil(end * rate)``, both included,
      clipped to the sequence (touching intervals share their boundary frame).  The frame offset is
      ignored, as in the tutorial; products are rounded to 1e-9 before the ceiling (so ``0.3 * 50`` is
      frame 15, not 16 by floating-point noise); ``frame_rate`` is required; an interval with no frame
      left after clipping is invalid.
    """
    if method not in {"mean", "center"}:
        raise ValueError(f"pooling must be 'mean' or 'center', got {method!r}")
    if rule not in FRAME_RULES:
        raise ValueError(f"frame rule must be one of {list(FRAME_RULES)}, got {rule!r}")
    n = len(times)
    if not intervals or n == 0:
        z = np.zeros(len(intervals), dtype=np.int64)
        return z, z, np.zeros(len(intervals), dtype=bool)
    if rule == "ceil_inclusive":
        if method != "mean" or not frame_rate:
            raise ValueError("frame rule 'ceil_inclusive' needs method='mean' and a frame_rate")
        lo = np.array([max(0, math.ceil(round(iv.start * frame_rate, 9))) for iv in intervals], dtype=np.int64)
        hi = np.array([min(n - 1, math.ceil(round(iv.end * frame_rate, 9))) + 1 for iv in intervals], dtype=np.int64)
        return lo, hi, hi > lo
    starts, ends = _bounds(intervals)
    mid = (starts + ends) / 2
    step = (1.0 / frame_rate) if frame_rate else (times[1] - times[0] if n > 1 else 1.0)
    nearest = np.clip(np.rint((mid - times[0]) / step).astype(np.int64), 0, n - 1)
    valid = (mid <= times[-1] + step / 2) & (mid >= times[0] - step / 2)
    if method == "center":
        lo = nearest
        hi = nearest + 1
    else:
        lo = np.searchsorted(times, starts, side="left")
        hi = np.searchsorted(times, ends, side="left")
        empty = hi <= lo
        lo[empty], hi[empty] = nearest[empty], nearest[empty] + 1
    return lo.astype(np.int64), hi.astype(np.int64), valid


def track_at(track: Track, times: np.ndarray) -> np.ndarray:
    """Track values at ``times`` by linear interpolation: ``(len(times), K)``, NaN outside."""
    n = track.values.shape[0]
    if n == 0:
        return np.full((len(times), track.values.shape[1]), np.nan)
    pos = times * track.rate  # fractional sample index
    out = np.empty((len(times), track.values.shape[1]), dtype=np.float64)
    j = np.arange(n)
    for k in range(track.values.shape[1]):
        out[:, k] = np.interp(pos, j, track.values[:, k].astype(np.float64))
    outside = (pos < -0.5) | (pos > n - 0.5)
    out[outside] = np.nan
    # np.interp does not propagate NaN from both neighbours consistently: mask where either is NaN
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    frac = (pos - lo)[:, None] > 0  # (T, 1): the upper neighbour matters
    bad = np.isnan(track.values[lo]) | (np.isnan(track.values[hi]) & frac)  # (T, K)
    out[bad] = np.nan
    return out


# ----------------------------------------------------------------------------- views over a cache


@dataclass
class FrameItems:
    """Labelled frames: ``rows`` index the cache's layer arrays."""

    rows: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) str labels
    utt: np.ndarray  # (N,) utterance index
    counts: dict = field(default_factory=dict)


@dataclass
class SegmentItems:
    """Labelled segments: frames ``[lo, hi)`` of the cache's rows, pooled by the caller."""

    lo: np.ndarray  # (N,)
    hi: np.ndarray  # (N,)
    labels: np.ndarray  # (N,)
    utt: np.ndarray  # (N,)
    start: np.ndarray  # (N,) seconds
    end: np.ndarray  # (N,)
    context: np.ndarray  # (N,) str: e.g. neighbouring phones, for ABX contexts
    counts: dict = field(default_factory=dict)


@dataclass
class TrackItems:
    rows: np.ndarray  # (N,)
    values: np.ndarray  # (N, K) float32, NaN where unknown
    names: tuple[str, ...]
    utt: np.ndarray  # (N,)
    counts: dict = field(default_factory=dict)


def check_same_utterances(acts, corpus: Corpus) -> None:
    """CorpusError unless the cache ``acts`` lists exactly the corpus's utterances, in order."""
    if list(acts.ids) != list(corpus.ids):
        raise CorpusError(
            f"activation cache {acts.path} and corpus {corpus.name!r} list different utterances; rebuild the cache"
        )


def _tier_or_skip(corpus: Corpus, u: int, tier: str, on_missing: str, counts: dict):
    ann = corpus.annotation(u)
    if tier not in ann.tiers:
        if on_missing == "skip":
            counts["utterances_missing_tier"] = counts.get("utterances_missing_tier", 0) + 1
            return ann, None
        ann.tier(tier)  # raises, naming utterance and tier
    return ann, ann.tiers[tier]


def frame_items(acts, corpus: Corpus, tier: str, on_missing: str = "error", utterances=None) -> FrameItems:
    """Every frame inside a labelled interval of ``tier`` (see conventions); labels through the
    corpus's label normalisation (:mod:`src.datamodules.labels`), silence frames left out."""
    from src.datamodules.labels import label_norm_of, warn_case_collisions

    check_same_utterances(acts, corpus)
    norm = label_norm_of(corpus)
    rows, labels, utt, counts = [], [], [], {}
    for u in range(len(corpus)) if utterances is None else utterances:
        _, ivs = _tier_or_skip(corpus, u, tier, on_missing, counts)
        if ivs is None:
            continue
        if not ivs:
            counts[f"utterances_empty_{tier}_tier"] = counts.get(f"utterances_empty_{tier}_tier", 0) + 1
            continue
        t = acts.frame_times(u)
        idx, ok = frame_labels(ivs, t)
        labs = norm.apply([iv.label for iv in ivs], tier, counts)  # (P,) per interval, None: a dropped silence
        lab_iv = np.array(labs + [None], dtype=object)  # (P + 1,): index -1 (no interval) -> None
        lab_f = lab_iv[idx]  # (T,)
        silent = ok & np.array([x is None for x in labs] + [True], dtype=bool)[idx]  # (T,)
        if silent.any():
            counts["frames_silence"] = counts.get("frames_silence", 0) + int(silent.sum())
        local = np.flatnonzero(ok & ~silent)
        rows.append(acts.offsets[u] + local)
        labels.append(lab_f[local])
        utt.append(np.full(len(local), u))
    if not rows:
        raise CorpusError(f"no utterance of corpus {corpus.name!r} has a non-empty tier {tier!r}")
    _warn_empty(counts, tier)
    out = FrameItems(np.concatenate(rows), np.concatenate(labels).astype(str), np.concatenate(utt), counts)
    if norm.case == "keep":
        warn_case_collisions(np.unique(out.labels), tier, counts)
    return out


def _warn_empty(counts: dict, tier: str) -> None:
    n = counts.get(f"utterances_empty_{tier}_tier", 0)
    if n:
        log.warning("%d utterances have an empty %r tier: they contribute no items (counted in the results)", n, tier)


def segment_items(
    acts, corpus: Corpus, tier: str, method: str = "mean", on_missing: str = "error", utterances=None
) -> SegmentItems:
    """One item per labelled interval of ``tier``; context = labels of the neighbouring intervals."""
    from src.datamodules.labels import label_norm_of, warn_case_collisions

    check_same_utterances(acts, corpus)
    norm = label_norm_of(corpus)
    cols: dict[str, list] = {k: [] for k in ("lo", "hi", "labels", "utt", "start", "end", "context")}
    counts: dict = {}
    for u in range(len(corpus)) if utterances is None else utterances:
        _, ivs = _tier_or_skip(corpus, u, tier, on_missing, counts)
        if ivs is None:
            continue
        if not ivs:
            counts[f"utterances_empty_{tier}_tier"] = counts.get(f"utterances_empty_{tier}_tier", 0) + 1
            continue
        t = acts.frame_times(u)
        lo, hi, valid = segment_frames(ivs, t, method, acts.frame_rate)
        if (~valid).any():
            counts["segments_beyond_frames"] = counts.get("segments_beyond_frames", 0) + int((~valid).sum())
        norm_labs = norm.apply([iv.label for iv in ivs], tier, counts)
        labs = ["#" if x is None else x for x in norm_labs]  # a dropped silence is a boundary for contexts
        ctx = [f"{labs[i - 1] if i > 0 else '#'}_{labs[i + 1] if i + 1 < len(labs) else '#'}" for i in range(len(labs))]
        keep = np.flatnonzero(valid & np.array([x is not None for x in norm_labs], dtype=bool))
        off = acts.offsets[u]
        cols["lo"].append(off + lo[keep])
        cols["hi"].append(off + hi[keep])
        cols["labels"].append(np.array(labs, dtype=object)[keep])
        cols["utt"].append(np.full(len(keep), u))
        cols["start"].append(np.array([ivs[i].start for i in keep]))
        cols["end"].append(np.array([ivs[i].end for i in keep]))
        cols["context"].append(np.array(ctx, dtype=object)[keep])
    if not cols["lo"]:
        raise CorpusError(f"no utterance of corpus {corpus.name!r} has intervals in tier {tier!r}")
    _warn_empty(counts, tier)
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    out = SegmentItems(
        cat["lo"], cat["hi"], cat["labels"].astype(str), cat["utt"], cat["start"], cat["end"],
        cat["context"].astype(str), counts,
    )  # fmt: skip
    if norm.case == "keep":
        warn_case_collisions(np.unique(out.labels), tier, counts)
    return out


TRACK_ALIGNMENTS = ("interpolate", "index")


def track_values(track: Track, times: np.ndarray, alignment: str = "interpolate", frame_rate: float | None = None,
                 where: str = "") -> np.ndarray:  # fmt: skip
    """Track values for the frames at ``times``: ``(len(times), K)``, NaN where there is none.

    ``interpolate``: :func:`track_at` (linear interpolation at each frame's time).  ``index``: frame ``k``
    gets row ``k`` and frames past the last row get NaN (the tutorial's ``min_len`` truncation); the
    track rate must equal ``frame_rate``, else :class:`CorpusError` (naming ``where``).
    """
    if alignment == "interpolate":
        return track_at(track, times)
    if alignment != "index":
        raise CorpusError(f"task.alignment must be one of {TRACK_ALIGNMENTS}, got {alignment!r}")
    if frame_rate is None or abs(track.rate - frame_rate) > 1e-6 * frame_rate:
        raise CorpusError(f"{where}: task.alignment=index pairs frame k with track row k, but the track is at "
                          f"{track.rate:g} Hz and the frames at {frame_rate} Hz; resample the track to the frame rate "
                          "in the reader (e.g. data.ema_rate=50) or use task.alignment=interpolate")  # fmt: skip
    out = np.full((len(times), track.values.shape[1]), np.nan)
    n = min(len(times), track.values.shape[0])
    out[:n] = track.values[:n]
    return out


def track_items(acts, corpus: Corpus, track: str, utterances=None, channels=None,
                alignment: str = "interpolate") -> TrackItems:  # fmt: skip
    """Every frame with the track interpolated at its time (``track_at``), for the probed channels.

    ``channels``: the channels to probe, in this order (default: all the track has).

    NaN handling (counted in ``counts`` and warned):
    - Only the probed channels matter: a frame is dropped when one of them is NaN there
      (``frames_nan``); NaN in another channel costs nothing.
    - With ``channels=None``, a channel that is NaN in *every* frame of some utterance (a
      dead or missing sensor) is dropped from the items for the whole corpus
      (``channels_dropped_all_nan`` and ``channel_all_nan_utterances/<name>``: in how many
      utterances), rather than dropping every frame of those utterances for all channels.
      Name the channels explicitly to keep such a channel (its NaN frames are then dropped).
    - A probed channel without a value in any frame, or no frame left at all, is a
      :class:`CorpusError` naming the track and an utterance's file.
    """
    check_same_utterances(acts, corpus)
    per_utt, names, first_path = [], None, {}
    for u in range(len(corpus)) if utterances is None else utterances:
        ann = corpus.annotation(u)
        if track not in ann.tracks:
            raise CorpusError(f"utterance {ann.id!r} ({ann.path}) has no track {track!r}; it has {sorted(ann.tracks)}")
        tr = ann.tracks[track]
        if names is not None and tr.names != names:
            raise CorpusError(f"utterance {ann.id!r} ({ann.path}): track {track!r} has channels {tr.names}, expected {names}")
        names = tr.names
        first_path.setdefault("any", ann.path or ann.id)
        per_utt.append((u, ann, track_values(tr, acts.frame_times(u), alignment, acts.frame_rate,
                                             f"utterance {ann.id!r} ({ann.path})")))  # (T, K)
    names = tuple(names or ())
    if channels is not None:
        channels = [str(c) for c in channels]
        missing = [c for c in channels if c not in names]
        if missing:
            raise CorpusError(f"track {track!r} has no channels {missing}; it has {list(names)}")
        cols = [names.index(c) for c in channels]
    else:
        cols = list(range(len(names)))
    counts: dict = {"frames_nan": 0}
    if channels is None and per_utt:
        all_nan = np.zeros(len(names), dtype=np.int64)  # utterances in which the channel is NaN everywhere
        example: dict[int, str] = {}
        for _, ann, v in per_utt:
            if len(v):
                dead = np.isnan(v).all(axis=0)
                all_nan += dead
                for k in np.flatnonzero(dead):
                    example.setdefault(int(k), ann.path or ann.id)
        dropped = [k for k in cols if all_nan[k] > 0]
        if dropped:
            counts["channels_dropped_all_nan"] = len(dropped)
            for k in dropped:
                counts[f"channel_all_nan_utterances/{names[k]}"] = int(all_nan[k])
            log.warning(
                "track %r: channel(s) %s are NaN in every frame of some utterances (%s; e.g. %s) and are left out; "
                "name the channels (task.channels) to keep them and drop their NaN frames instead",
                track, [names[k] for k in dropped], {names[k]: int(all_nan[k]) for k in dropped}, example[dropped[0]],
            )  # fmt: skip
            cols = [k for k in cols if k not in dropped]
            if not cols:
                raise CorpusError(
                    f"track {track!r}: every channel {list(names)} is NaN in every frame of some utterance "
                    f"(e.g. {example[dropped[0]]}); no channel is left to probe"
                )
    rows, vals, utt = [], [], []
    seen = np.zeros(len(cols), dtype=bool)
    for u, _ann, v in per_utt:
        v = v[:, cols]
        nan = np.isnan(v)
        seen |= ~nan.all(axis=0) if len(v) else False
        ok = ~nan.any(axis=1)
        counts["frames_nan"] += int((~ok).sum())
        rows.append(acts.offsets[u] + np.flatnonzero(ok))
        vals.append(v[ok].astype(np.float32))
        utt.append(np.full(int(ok.sum()), u))
    kept = tuple(names[k] for k in cols)
    if per_utt and not seen.all():
        raise CorpusError(
            f"track {track!r}: channel(s) {[kept[j] for j in np.flatnonzero(~seen)]} have no value at any frame time "
            f"of the {len(per_utt)} utterances (e.g. {first_path['any']})"
        )
    if per_utt and not sum(len(r) for r in rows):
        raise CorpusError(
            f"track {track!r}: no frame has a value in all of the channels {list(kept)} "
            f"(e.g. {first_path['any']}); the channels are NaN at different frames"
        )
    if counts["frames_nan"]:
        log.warning(
            "track %r: %d frames without a value in %s (NaN or outside the track) were masked",
            track, counts["frames_nan"], list(kept),
        )  # fmt: skip
    if not per_utt:
        return TrackItems(np.zeros(0, np.int64), np.zeros((0, len(kept)), np.float32), kept, np.zeros(0, np.int64), counts)
    return TrackItems(np.concatenate(rows), np.concatenate(vals), kept, np.concatenate(utt), counts)


def gather(layer: np.ndarray, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``layer[rows]`` as a dense array: (N, D)."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), layer.shape[1]), dtype=dtype)
    out[order] = layer[rows[order]]  # sorted reads are sequential on the memmap
    return out


def pool(layer: np.ndarray, lo: np.ndarray, hi: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Mean of ``layer[lo:hi]`` per segment: (N, D) (a one-frame range is that frame)."""
    lens = hi - lo
    if (lens < 1).any():
        raise ValueError("empty segment range")
    rows = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)])  # (sum lens,)
    frames = gather(layer, rows, np.float64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    return (np.add.reduceat(frames, starts, axis=0) / lens[:, None]).astype(dtype)
