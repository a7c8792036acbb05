"""Deliberately literal references for the segment code (explicit Python loops; tests only)."""

from __future__ import annotations

import math


def segment_of_time(t: float, starts, ends, duration: float, padded: bool) -> int:
    """The rounding rule spelt out: the segment with start <= t < end; t >= duration -> padding (n) or the last."""
    n = len(starts)
    if t >= duration:
        return n if padded else n - 1
    for i in range(n):
        if starts[i] <= t < ends[i]:
            return i
    return n - 1


def reduce_scores(raw, mask, n_segments: int, reduction: str):
    """Loop over every element: per segment the mean / sum / l2 of its elements."""
    acc = [[] for _ in range(n_segments)]
    for r, m in zip(raw, mask):
        if 0 <= m < n_segments:
            acc[m].append(float(r))
    out = []
    for vals in acc:
        if not vals:
            out.append(float("nan"))
        elif reduction == "mean":
            out.append(sum(vals) / len(vals))
        elif reduction == "sum":
            out.append(sum(vals))
        else:
            out.append(math.sqrt(sum(v * v for v in vals)))
    return out
