"""Information-theoretic measures between discrete units and labels (e.g. k-means units vs phones).

Conventions
-----------
- ``units`` and ``labels`` are 1-D sequences of the same length (one entry per frame),
  of any hashable dtype numpy can sort (ints, strings). Frames are counted equally.
- The joint distribution is ``P(u, y) = count(u, y) / N`` over the observed values.
- Entropies use ``base`` (default 2, bits). NMI is base-free.
- Purities follow Hsu et al. (2021, HuBERT, section IV-C):
  phone purity ``= sum_u P(u) max_y P(y | u)`` (the mean over frames of the probability of
  the most likely phone of the frame's unit), cluster purity
  ``= sum_y P(y) max_u P(u | y)``, and PNMI ``= I(y; u) / H(y)``.
- k-means itself is not here: the analysis fits it with scikit-learn.
- Errors: empty or length-mismatched inputs raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import rel_entr

__all__ = [
    "conditional_entropy",
    "contingency",
    "entropy",
    "js_divergence",
    "mutual_info",
    "normalized_mutual_info",
    "phone_normalized_mutual_info",
    "purity",
    "unit_distributions",
]


def _pair(units: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    u, y = np.asarray(units).reshape(-1), np.asarray(labels).reshape(-1)  # (N,), (N,)
    if u.shape != y.shape:
        raise ValueError(f"units and labels must have the same length, got {u.size} and {y.size}")
    if u.size == 0:
        raise ValueError("units and labels are empty")
    return u, y


def contingency(units: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts of each (unit, label): returns (sorted units (U,), sorted labels (C,), counts (U, C) int64)."""
    u, y = _pair(units, labels)
    uv, ui = np.unique(u, return_inverse=True)
    yv, yi = np.unique(y, return_inverse=True)
    counts = np.zeros((uv.size, yv.size), dtype=np.int64)
    np.add.at(counts, (ui.reshape(-1), yi.reshape(-1)), 1)  # (N,) indices into (U, C)
    return uv, yv, counts


def _h(p: np.ndarray) -> float:
    """Entropy (nats) of probabilities p (any shape, sums to 1)."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def entropy(values: Any, base: float = 2.0) -> float:
    """Entropy of the empirical distribution of ``values``."""
    v = np.asarray(values).reshape(-1)  # (N,)
    if v.size == 0:
        raise ValueError("values is empty")
    _, counts = np.unique(v, return_counts=True)
    return _h(counts / v.size) / np.log(base)


def mutual_info(units: Any, labels: Any, base: float = 2.0) -> float:
    """I(units; labels) = H(labels) - H(labels | units)."""
    _, _, c = contingency(units, labels)
    p = c / c.sum()
    pu, py = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * (np.log(p[nz]) - np.log(np.outer(pu, py)[nz]))).sum())
    return max(mi, 0.0) / np.log(base)


def conditional_entropy(labels: Any, given: Any, base: float = 2.0) -> float:
    """H(labels | given) = H(labels, given) - H(given)."""
    _, _, c = contingency(given, labels)
    p = c / c.sum()
    return max(_h(p) - _h(p.sum(1)), 0.0) / np.log(base)


def normalized_mutual_info(units: Any, labels: Any) -> float:
    """NMI with arithmetic normalisation ``I / mean(H(u), H(y))`` (scikit-learn's default).

    As in scikit-learn: 1.0 when both sides have a single value, 0.0 when the mutual
    information is 0 (including when only one side has a single value).
    """
    uv, yv, c = contingency(units, labels)
    if uv.size == yv.size == 1:
        return 1.0
    p = c / c.sum()
    nz = p > 0
    pu, py = p.sum(1), p.sum(0)
    mi = float((p[nz] * (np.log(p[nz]) - np.log(np.outer(pu, py)[nz]))).sum())
    if mi <= 0:
        return 0.0
    return mi / ((_h(pu) + _h(py)) / 2)


def phone_normalized_mutual_info(units: Any, labels: Any) -> float:
    """PNMI (Hsu et al., 2021): ``I(y; u) / H(y)``, the fraction of label uncertainty a unit removes."""
    _, yv, _ = contingency(units, labels)
    if yv.size == 1:
        raise ValueError("PNMI is undefined with a single label value (H(labels) = 0)")
    return mutual_info(units, labels, base=np.e) / entropy(labels, base=np.e)


def purity(units: Any, labels: Any) -> tuple[float, float]:
    """(phone purity, cluster purity) as in Hsu et al. (2021); see the module docstring."""
    _, _, c = contingency(units, labels)
    p = c / c.sum()  # (U, C) joint
    phone_purity = float(p.max(1).sum())  # sum_u P(u) max_y P(y|u) = sum_u max_y P(u, y)
    cluster_purity = float(p.max(0).sum())  # sum_y max_u P(u, y)
    return phone_purity, cluster_purity


def js_divergence(p: Any, q: Any, base: float = 2.0, axis: int = -1) -> np.ndarray | float:
    """Jensen-Shannon divergence ``(KL(p||m) + KL(q||m)) / 2``, ``m = (p + q) / 2``, along ``axis``.

    ``p`` and ``q`` are non-negative and normalised to sum to 1 along ``axis`` (as
    scipy's ``jensenshannon`` does, whose square this equals). Broadcasts; returns a float
    for 1-D inputs. In ``[0, 1]`` for base 2.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if (p < 0).any() or (q < 0).any():
        raise ValueError("js_divergence needs non-negative p and q")
    sp, sq = p.sum(axis, keepdims=True), q.sum(axis, keepdims=True)
    if (sp == 0).any() or (sq == 0).any():
        raise ValueError("js_divergence needs p and q with a positive sum")
    p, q = p / sp, q / sq
    m = (p + q) / 2
    js = (rel_entr(p, m).sum(axis) + rel_entr(q, m).sum(axis)) / 2 / np.log(base)
    js = np.maximum(js, 0.0)
    return float(js) if np.ndim(js) == 0 else js


def unit_distributions(units: Any, labels: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each label class, its distribution over units ``0..k-1``: (sorted classes (C,), (C, k))."""
    u, y = _pair(units, labels)
    if not np.issubdtype(u.dtype, np.integer):
        raise ValueError(f"units must be integers in [0, k), got dtype {u.dtype}")
    if u.min() < 0 or u.max() >= k:
        raise ValueError(f"units must be in [0, {k}), got range [{u.min()}, {u.max()}]")
    classes, yi = np.unique(y, return_inverse=True)
    counts = np.zeros((classes.size, k), dtype=np.float64)
    np.add.at(counts, (yi.reshape(-1), u), 1.0)  # (N,) indices into (C, k)
    return classes, counts / counts.sum(1, keepdims=True)
