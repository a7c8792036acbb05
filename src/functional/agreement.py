"""Rank agreement of word-score vectors: Spearman, Kendall, top-k overlap; means over utterances with
bootstrap intervals; pairwise matrices over a set of sources (methods, input types, baselines, seeds).

numpy + scipy only. One vector per utterance and source: the scores of that utterance's segments (words),
in segment order; two sources are compared utterance by utterance on vectors of equal length.

- ``spearman``: ``scipy.stats.spearmanr`` (Pearson r of the ranks, ties get their average rank).
- ``kendall``: ``scipy.stats.kendalltau(variant="b")``, Kendall's **tau-b** (ties in either vector are
  corrected for in the denominator, so tau-b = 1 for identical vectors with ties).
- ``top_k``: ``|top-k(a) & top-k(b)| / k``, top-k = the k highest scores, ties broken by the lower segment
  index (a stable sort of ``-score``, the same ranking convention as ``src.functional.faithfulness``);
  ``k`` above the vector length is clipped to it.

A correlation is undefined (NaN) when a vector is constant or has fewer than 2 entries; such utterances
are left out of the mean (and counted: ``n`` is the number of utterances used). Means over utterances come
with a percentile bootstrap interval over utterances (:func:`src.functional.intervals.bootstrap_ci`,
``statistic="mean"``; every cell of a matrix with the same seed, so cells on the same utterances are
resampled alike).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AGREEMENT_MEASURES",
    "AgreementError",
    "AgreementMatrix",
    "agreement",
    "agreement_matrix",
    "kendall",
    "mean_with_interval",
    "per_item_agreement",
    "spearman",
    "top_k_overlap",
    "unit_means",
]

AGREEMENT_MEASURES = ("spearman", "kendall", "top_k")


class AgreementError(ValueError):
    """Vectors that cannot be compared (different lengths, unknown measure, no common utterance)."""


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise AgreementError(f"score vectors of different lengths: {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise AgreementError("score vectors hold non-finite values")
    return a, b


def _constant(x: np.ndarray) -> bool:
    return len(x) < 2 or bool(np.all(x == x[0]))


def spearman(a: Any, b: Any) -> float:
    """Spearman's rho (average ranks for ties); NaN when a vector is constant or shorter than 2."""
    from scipy.stats import spearmanr

    a, b = _pair(a, b)
    if _constant(a) or _constant(b):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def kendall(a: Any, b: Any) -> float:
    """Kendall's tau-b; NaN when a vector is constant or shorter than 2."""
    from scipy.stats import kendalltau

    a, b = _pair(a, b)
    if _constant(a) or _constant(b):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(kendalltau(a, b, variant="b").statistic)


def top_k_overlap(a: Any, b: Any, k: int = 1) -> float:
    """``|top-k(a) & top-k(b)| / k`` (ties: lower index first; ``k`` clipped to the length); NaN when empty."""
    a, b = _pair(a, b)
    if int(k) < 1:
        raise AgreementError(f"top-k overlap needs k >= 1, got {k}")
    k = min(int(k), len(a))
    if k == 0:
        return float("nan")
    ta = set(np.argsort(-a, kind="stable")[:k].tolist())
    tb = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(ta & tb) / k


def agreement(a: Any, b: Any, measure: str, k: int = 1) -> float:
    """One of ``AGREEMENT_MEASURES`` between two score vectors of one utterance."""
    if measure == "spearman":
        return spearman(a, b)
    if measure == "kendall":
        return kendall(a, b)
    if measure == "top_k":
        return top_k_overlap(a, b, k)
    raise AgreementError(f"agreement measure must be one of {AGREEMENT_MEASURES}, got {measure!r}")


def per_item_agreement(a: Mapping[Any, Any], b: Mapping[Any, Any], measure: str, k: int = 1) -> dict[Any, float]:
    """``{utterance: agreement}`` over the utterances both sources have (``a``, ``b``: utterance -> vector).

    A length mismatch on one utterance is an AgreementError naming it."""
    out = {}
    for u in a:
        if u not in b:
            continue
        try:
            out[u] = agreement(a[u], b[u], measure, k)
        except AgreementError as e:
            raise AgreementError(f"utterance {u!r}: {e}") from None
    return out


def mean_with_interval(values: Any, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Mean of per-utterance values (NaN left out) with a percentile bootstrap interval over utterances:
    ``{"value", "ci_low", "ci_high", "n_units"}`` (all NaN, n_units = 0, when nothing is left)."""
    from src.functional.intervals import bootstrap_ci

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_units": 0}
    ci = bootstrap_ci(v, statistic="mean", n_boot=n_boot, alpha=alpha, seed=seed)
    return {"value": float(v.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high), "n_units": int(len(v))}


@dataclass(frozen=True)
class AgreementMatrix:
    """Pairwise agreement of sources: ``value``, ``ci_low``, ``ci_high`` ``(S, S)`` means over utterances,
    ``n`` ``(S, S)`` utterances used per cell. Symmetric; the diagonal is each source with itself."""

    names: list[str]
    measure: str
    k: int
    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n: np.ndarray

    def rows(self, **context) -> list[dict]:
        """Long format: one row per unordered pair (diagonal included); ``n_units`` = ``n`` of the cell."""
        out = []
        for i, a in enumerate(self.names):
            for j in range(i, len(self.names)):
                out.append({**context, "source_a": a, "source_b": self.names[j], "metric": self.measure,
                            "value": float(self.value[i, j]), "ci_low": float(self.ci_low[i, j]),
                            "ci_high": float(self.ci_high[i, j]), "n_units": int(self.n[i, j]),
                            **({"k": self.k} if self.measure == "top_k" else {})})  # fmt: skip
        return out


def unit_means(per_item: Mapping[Any, float], unit_of: Callable[[Any], Any] | None = None) -> list[float]:
    """Per-item values averaged within their unit (``unit_of(item key)``, e.g. the utterance of an
    (utterance, head) key; NaN items left out, units with none left out); the items themselves when None."""
    if unit_of is None:
        return list(per_item.values())
    groups: dict[Any, list[float]] = {}
    for key, v in per_item.items():
        if np.isfinite(v):
            groups.setdefault(unit_of(key), []).append(float(v))
    return [float(np.mean(v)) for v in groups.values()]


def agreement_matrix(sources: Mapping[str, Mapping[Any, Any]], measure: str, k: int = 1, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0, names: Sequence[str] | None = None,
                     unit_of: Callable[[Any], Any] | None = None) -> AgreementMatrix:  # fmt: skip
    """Pairwise agreement between sources (``name -> {item: scores}``), each cell the mean over the items both
    sources have, with its bootstrap interval. ``unit_of``: items -> bootstrap unit (values averaged within a
    unit first; e.g. items ``(utterance, head)`` with the utterance as unit); ``n`` then counts units."""
    names = list(sources) if names is None else list(names)
    S = len(names)
    val, lo, hi = (np.full((S, S), np.nan) for _ in range(3))
    n = np.zeros((S, S), dtype=np.int64)
    for i in range(S):
        for j in range(i, S):
            per = per_item_agreement(sources[names[i]], sources[names[j]], measure, k)
            s = mean_with_interval(unit_means(per, unit_of), n_boot=n_boot, alpha=alpha, seed=seed)
            for m, key in ((val, "value"), (lo, "ci_low"), (hi, "ci_high")):
                m[i, j] = m[j, i] = s[key]
            n[i, j] = n[j, i] = s["n_units"]
    return AgreementMatrix(names, measure, int(k), val, lo, hi, n)
