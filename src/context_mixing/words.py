"""Frames <-> words, word pooling, row normalisation, rollout: pure numpy, float64.

Conventions
-----------
- **Frame time** (the framework's alignment convention, src/datamodules/alignment.py): frame ``k``
  stands for ``frame_offset + k / frame_rate`` seconds.
- **Frame mappings** (:func:`word_frames`, which calls ``alignment.segment_frames(..., rule=mapping)``):

  * ``"interval"`` (default): frame ``k`` belongs to the word ``[start, end)`` that contains its
    time, exactly as ``alignment.frame_labels`` / ``frame_items`` label frames.  A word that contains
    no frame time (shorter than a frame) gets the frame nearest to its midpoint (``alignment.
    segment_frames``' rule), so no word is lost; that frame may also belong to a neighbour.
  * ``"ceil_inclusive"`` (the tutorial, Mohebbi et al. 2023, ``get_encoder_word_boundaries``): frames
    ``ceil(start * rate) .. ceil(end * rate)``, both included, clipped to the sequence.  Touching words
    share their boundary frame.  ``frame_offset`` is ignored here, as in the tutorial (its ``T / dur``
    is the frame rate: 50 Hz for Whisper's 1500 frames / 30 s); products are rounded to 1e-9 before
    the ceiling so that e.g. ``0.3 * 50`` does not become frame 16 by floating-point noise.

- **Word scores**: ``S[i <- j]`` is the mean over the frame block (receiving frames of word ``i``,
  source frames of word ``j``) (:func:`pool_blocks`: attention, rollout, norms), or the mean over
  the receiving frames of word ``i`` of the per-frame score when word ``j`` is the perturbed group
  (:func:`pool_receivers`: value zeroing).  Frames outside every word are never pooled; the share of
  the attention mass they receive is :func:`outside_mass`.
- **Row normalisation** (:func:`row_normalize`): ``S / sum_j S``; a row that sums to 0 stays 0 (one
  safe normaliser for every measure, unlike the tutorial's mix of safe and plain division).
"""

from __future__ import annotations

import math

import numpy as np

from src.context_mixing.common import ContextMixingError
from src.datamodules.alignment import FRAME_RULES, segment_frames
from src.datamodules.corpus import Interval
from src.layers import frame_times

FRAME_MAPPINGS = FRAME_RULES  # analysis.frame_mapping: alignment.segment_frames' named rules


def _word_name(utt_id: str, k: int, word) -> str:
    label, start, end = word
    return f"utterance {utt_id!r}, word {k} {label!r} [{start:.3f}, {end:.3f}] s"


def word_frames(words: list[tuple[str, float, float]], num_frames: int, frame_rate: float,
                frame_offset: float, mapping: str = "interval", utt_id: str = "?",
                audio_duration: float | None = None) -> list[np.ndarray]:  # fmt: skip
    """Frame indices (sorted int64 arrays, 0-based) of each word ``(label, start_s, end_s)``.

    ``num_frames``: frames of the sequence the encoder sees (1500 for Whisper's 30 s window).
    ``audio_duration``: seconds of real audio (default: ``num_frames / frame_rate``); a word that starts at
    or after it, or ends more than half a frame after it, is an error.  See the module docstring for the
    two mappings.  Errors (:class:`ContextMixingError` naming the utterance and word): an empty word list,
    ``start >= end``, a word beyond the audio / the sequence, an unknown mapping.
    """
    if mapping not in FRAME_MAPPINGS:
        raise ContextMixingError(f"analysis.frame_mapping={mapping!r} is not one of {list(FRAME_MAPPINGS)}")
    if not words:
        raise ContextMixingError(f"utterance {utt_id!r}: no words (an empty or missing words tier)")
    if num_frames < 1:
        raise ContextMixingError(f"utterance {utt_id!r}: no frames")
    rate = float(frame_rate)
    dur = float(audio_duration) if audio_duration is not None else num_frames / rate
    seq_end = frame_offset + num_frames / rate  # the time the sequence covers
    half = 0.5 / rate
    times = frame_times(num_frames, rate, frame_offset)  # (T,)
    out = []
    for k, w in enumerate(words):
        label, start, end = w[0], float(w[1]), float(w[2])
        if not (math.isfinite(start) and math.isfinite(end)) or start >= end:
            raise ContextMixingError(f"{_word_name(utt_id, k, (label, start, end))}: start must be < end")
        if start < -half:
            raise ContextMixingError(f"{_word_name(utt_id, k, (label, start, end))}: starts before the audio")
        if start >= dur or end > dur + half:
            raise ContextMixingError(
                f"{_word_name(utt_id, k, (label, start, end))}: beyond the audio ({dur:.3f} s)"
            )
        if start >= seq_end or end > seq_end + half:
            raise ContextMixingError(
                f"{_word_name(utt_id, k, (label, start, end))}: beyond the {num_frames} frames the encoder sees "
                f"({seq_end:.3f} s)"
            )
        lo, hi, ok = segment_frames([Interval(start, end, str(label))], times, "mean", rate, rule=mapping)
        if not ok[0] and mapping == "ceil_inclusive":
            raise ContextMixingError(f"{_word_name(utt_id, k, (label, start, end))}: no frame in the sequence")
        # "interval": the bounds checks above decide; segment_frames' [lo, hi) (or the nearest frame) is kept
        idx = np.arange(lo[0], hi[0])
        out.append(idx.astype(np.int64))
    return out


def assignment_matrix(groups: list[np.ndarray], num_frames: int) -> np.ndarray:
    """``(W, T)`` float64: row ``w`` is ``1 / |I_w|`` on the frames of word ``w``, 0 elsewhere (a
    mean-pooling operator; overlapping words each get the shared frame)."""
    P = np.zeros((len(groups), num_frames), dtype=np.float64)
    for w, idx in enumerate(groups):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise ContextMixingError(f"word {w} has no frames")
        P[w, idx] = 1.0 / idx.size
    return P


def pool_blocks(frame_scores: np.ndarray, recv: list[np.ndarray], src: list[np.ndarray]) -> np.ndarray:
    """``(..., T, S) -> (..., W_recv, W_src)``: the mean over each (receiving word i, source word j) frame
    block, as ``P_recv S P_src^T`` with mean-pooling matrices (float64)."""
    S = np.asarray(frame_scores, dtype=np.float64)
    Pr = assignment_matrix(recv, S.shape[-2])  # (Wr, T)
    Ps = assignment_matrix(src, S.shape[-1])  # (Ws, S)
    return Pr @ S @ Ps.T  # (..., Wr, Ws)


def pool_receivers(scores: np.ndarray, recv: list[np.ndarray]) -> np.ndarray:
    """``(..., T, G) -> (..., W, G)``: the mean over the frames of each receiving word (value zeroing,
    where column ``g`` already is the perturbed source group).  NaN rows (frames not computed) that a
    word pools propagate as NaN."""
    S = np.asarray(scores, dtype=np.float64)
    P = assignment_matrix(recv, S.shape[-2])  # (W, T)
    rows = np.unique(np.concatenate([np.asarray(r, dtype=np.int64) for r in recv]))
    # only the pooled rows enter (frames outside every word may be NaN: not computed)
    return P[:, rows] @ S[..., rows, :]


def row_normalize(S: np.ndarray) -> np.ndarray:
    """``S / sum_j S`` along the last axis; a row that sums to 0 stays 0 (float64)."""
    S = np.asarray(S, dtype=np.float64)
    tot = S.sum(-1, keepdims=True)
    safe = np.where(tot == 0, 1.0, tot)
    return np.where(tot == 0, 0.0, S / safe)


def rollout(A: np.ndarray) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): ``(L, T, T)`` head-mean attention -> ``(L, T, T)``.

    ``A~_l = (A_l + I) / rowsum(A_l + I)``, ``R_0 = A~_0``, ``R_l = A~_l R_{l-1}`` (latest layer on the left);
    the same operations, in the same order, as ``compute_joint_attention`` of Abnar & Zuidema's code
    (bit-exact with it in float64).  Layer 0 here is the first layer given: pass every layer from the first
    transformer layer on."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 3 or A.shape[1] != A.shape[2]:
        raise ContextMixingError(f"rollout needs (L, T, T) attention, got shape {A.shape}")
    aug = A + np.eye(A.shape[1])[None, ...]
    aug = aug / aug.sum(axis=-1)[..., None]
    R = np.zeros(aug.shape)
    R[0] = aug[0]
    for i in range(1, A.shape[0]):
        R[i] = aug[i].dot(R[i - 1])
    return R


def outside_mass(frame_scores: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """``(..., T, T) -> (...,)``: per row inside a word, the share of its total (non-negative) mass on source
    frames outside every word (silence, Whisper's 30 s padding), averaged over the frames inside words
    (each frame once, however many words share it).  A row with zero mass counts 0."""
    S = np.asarray(frame_scores, dtype=np.float64)
    inside = np.unique(np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]))
    out_cols = np.ones(S.shape[-1], dtype=bool)
    out_cols[inside[inside < S.shape[-1]]] = False
    rows = S[..., inside, :]  # (..., R, T)
    tot = rows.sum(-1)
    outm = rows[..., out_cols].sum(-1)
    share = np.where(tot == 0, 0.0, outm / np.where(tot == 0, 1.0, tot))
    return share.mean(-1)
