"""Percentile bootstrap intervals over groups (utterances, texts, speakers, items).

numpy only. Conventions:
- Groups may be any hashable numpy-sortable values (ints, strings); they are ordered as
  ``np.unique`` orders them, and that order is part of the contract (it fixes which random
  draw goes to which group).
- Bootstrap resamples GROUPS (utterances), never frames: frames of one utterance are
  strongly correlated, so resampling frames gives intervals that are far too narrow.
- One resample design for every statistic (:func:`bootstrap_indices`), so intervals of several
  metrics on the same items and seed use the same resamples (paired).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BootstrapCI",
    "bootstrap_ci",
    "bootstrap_from_sums",
    "bootstrap_group_sums",
    "bootstrap_indices",
    "group_sums",
    "pearson_fn",
    "ratio_of_sums_ci",
]


# ---------------------------------------------------------------------- groups
def _group_index(groups: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},) like the values, got {g.shape}")
    return np.unique(g, return_inverse=True)  # (G,), (n,)


def group_sums(values: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group sums: ``(group_ids (G,), sums (G, ...), counts (G,))``; values ``(n, ...)``."""
    v = np.asarray(values, dtype=np.float64)
    ids, inv = _group_index(groups, v.shape[0])
    sums = np.zeros((ids.size, *v.shape[1:]))  # (G, ...)
    np.add.at(sums, inv, v)
    return ids, sums, np.bincount(inv, minlength=ids.size).astype(np.float64)


# ---------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class BootstrapCI:
    """Percentile bootstrap interval over groups. Arrays are scalars or ``(k,)`` per target."""

    estimate: float | np.ndarray  # statistic on all groups
    low: float | np.ndarray  # alpha/2 percentile
    high: float | np.ndarray  # 1 - alpha/2 percentile
    samples: np.ndarray  # (n_boot, ...) the bootstrap replicates
    n_groups: int
    alpha: float


def bootstrap_indices(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """The resample design: ``(n_boot, n_groups)`` group indices drawn with replacement.

    Exactly ``np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))``
    in one call, so an independent implementation can reproduce the same resamples.
    """
    return np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))


def _resample_counts(idx: np.ndarray, n_groups: int) -> np.ndarray:
    """How often each group appears in each resample: ``(n_boot, G)``."""
    n_boot = idx.shape[0]
    flat = idx + n_groups * np.arange(n_boot)[:, None]  # (B, G) offsets per resample
    return np.bincount(flat.ravel(), minlength=n_boot * n_groups).reshape(n_boot, n_groups).astype(np.float64)


def _pearson_from_sums(t: np.ndarray) -> np.ndarray:
    """t: (..., 6, k) sums [n, sx, sy, sxx, syy, sxy] -> Pearson r (..., k)."""
    n, sx, sy, sxx, syy, sxy = (t[..., i, :] for i in range(6))
    cov = n * sxy - sx * sy
    den = np.sqrt(np.clip(n * sxx - sx**2, 0, None) * np.clip(n * syy - sy**2, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, cov / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_ci(
    values: Any,
    groups: Any = None,
    *,
    totals: Any = None,
    target: Any = None,
    statistic: str = "accuracy",
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap confidence interval, resampling groups (utterances) with replacement.

    Inputs, by `statistic`:
    - ``"accuracy"`` / ``"mean"``: the pooled (micro) mean ``sum(values) / sum(counts)``.
      Either per-item `values` ``(n,)`` (0/1 correctness for accuracy) with `groups`
      ``(n,)``, or per-group sums `values` ``(G,)`` with `totals` ``(G,)`` (items per group;
      for ``"mean"`` without `totals` each group counts once) and ``groups=None``.
    - ``"pearson"``: per-item predictions `values` ``(n,)`` or ``(n, k)`` and `target` of the
      same shape, with `groups` ``(n,)`` (``None``: every item is its own group); r per
      target is recomputed in every resample from per-group sums (n, sx, sy, sxx, syy, sxy)
      of the globally centred data.

    Groups are ordered as ``np.unique(groups)``; resample b takes groups
    ``bootstrap_indices(G, n_boot, seed)[b]``. The interval is the (alpha/2, 1-alpha/2)
    percentile (``np.nanquantile``, linear) of the replicates; replicates that are
    undefined (a resample with no variance) are ignored. Vectorised: each replicate is one
    row of ``counts (B, G) @ group_sums (G, m)``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    v = np.asarray(values, dtype=np.float64)

    if statistic in ("accuracy", "mean"):
        if v.ndim != 1:
            raise ValueError(f"values must be 1-D for statistic={statistic!r}, got shape {v.shape}")
        if groups is not None:
            if statistic == "accuracy" and not np.isin(v, [0.0, 1.0]).all():
                raise ValueError("statistic='accuracy' with groups needs per-item 0/1 correctness values")
            if totals is not None:
                raise ValueError("give either per-item values with groups, or per-group values with totals")
            _, sums, counts = group_sums(v, groups)  # (G,), (G,)
        else:
            if totals is None and statistic == "accuracy":
                raise ValueError("statistic='accuracy' without groups needs per-group totals")
            sums = v
            counts = np.ones_like(v) if totals is None else np.asarray(totals, dtype=np.float64)
            if counts.shape != v.shape:
                raise ValueError(f"totals shape {counts.shape} differs from values shape {v.shape}")
            if statistic == "accuracy" and ((sums < 0) | (sums > counts)).any():
                raise ValueError("per-group correct counts must lie in [0, totals]")
        if not (counts > 0).any():
            raise ValueError("no items to average: all totals are 0")
        stats = np.stack([sums, counts], axis=1)  # (G, 2)

        def fn(t: np.ndarray) -> np.ndarray:  # t (..., 2)
            with np.errstate(invalid="ignore", divide="ignore"):
                return t[..., 0] / t[..., 1]

    elif statistic == "pearson":
        if target is None:
            raise ValueError("statistic='pearson' needs target")
        t = np.asarray(target, dtype=np.float64)
        if t.shape != v.shape or v.ndim not in (1, 2):
            raise ValueError(f"values {v.shape} and target {t.shape} must be equal (n,) or (n, k)")
        squeeze = v.ndim == 1
        p2 = v[:, None] if squeeze else v  # (n, k)
        t2 = t[:, None] if squeeze else t  # (n, k)
        p2, t2 = p2 - p2.mean(0), t2 - t2.mean(0)  # centring keeps the raw sums well conditioned
        per_item = np.stack([np.ones_like(p2), p2, t2, p2 * p2, t2 * t2, p2 * t2], axis=1)  # (n, 6, k)
        if groups is None:
            sums = per_item
        else:
            _, sums, _ = group_sums(per_item, groups)  # (G, 6, k)
        k = p2.shape[1]
        stats = sums.reshape(sums.shape[0], 6 * k)  # (G, 6k)

        def fn(s: np.ndarray) -> np.ndarray:  # s (..., 6k)
            r = _pearson_from_sums(s.reshape(*s.shape[:-1], 6, k))  # (..., k)
            return r[..., 0] if squeeze else r

    else:
        raise ValueError(f"statistic must be 'accuracy', 'mean' or 'pearson', got {statistic!r}")

    n_groups = stats.shape[0]
    estimate = fn(stats.sum(0))
    counts_b = _resample_counts(bootstrap_indices(n_groups, n_boot, seed), n_groups)  # (B, G)
    samples = fn(counts_b @ stats)  # (B, ...)
    with np.errstate(invalid="ignore"):
        low, high = np.nanquantile(samples, [alpha / 2, 1 - alpha / 2], axis=0)

    def out(a: Any) -> float | np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return float(a) if a.ndim == 0 else a

    return BootstrapCI(
        estimate=out(estimate),
        low=out(low),
        high=out(high),
        samples=samples,
        n_groups=n_groups,
        alpha=alpha,
    )


def bootstrap_from_sums(
    item_stats: Any,
    groups: Any,
    fn,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap over groups for any statistic that is a function of sums.

    item_stats: ``(n, m)`` per-item additive statistics (e.g. one-hot confusion entries,
        ``[1, y, y^2, (y - o)^2]``); groups: ``(n,)``; fn: ``fn(sums (..., m)) -> (..., k)`` or
        ``(...,)``, the statistic from summed stats.  The same resample design as
        :func:`bootstrap_ci` (``bootstrap_indices(G, n_boot, seed)``), so intervals of
        several metrics on the same items and seed use the same resamples (paired).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    v = np.asarray(item_stats, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"item_stats must be (n, m), got shape {v.shape}")
    _, sums, _ = group_sums(v, groups)  # (G, m)
    return bootstrap_group_sums(sums, fn, n_boot=n_boot, alpha=alpha, seed=seed)


def bootstrap_group_sums(
    sums: Any,
    fn,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> BootstrapCI:
    """`bootstrap_from_sums` from per-group sums already formed: ``sums (G, m)``, groups in
    ``np.unique`` order (streamed evaluation accumulates them chunk by chunk)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    sums = np.asarray(sums, dtype=np.float64)
    if sums.ndim != 2:
        raise ValueError(f"sums must be (G, m), got shape {sums.shape}")
    n_groups = sums.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = np.asarray(fn(sums.sum(0)), dtype=np.float64)
        counts_b = _resample_counts(bootstrap_indices(n_groups, n_boot, seed), n_groups)  # (B, G)
        samples = np.asarray(fn(counts_b @ sums), dtype=np.float64)  # (B, ...)
        low, high = np.nanquantile(samples, [alpha / 2, 1 - alpha / 2], axis=0)

    def out(a: Any) -> float | np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return float(a) if a.ndim == 0 else a

    return BootstrapCI(estimate=out(estimate), low=out(low), high=out(high), samples=samples, n_groups=n_groups,
                       alpha=alpha)  # fmt: skip


def pearson_fn(k: int, squeeze: bool = False):
    """Pearson r per target from summed stats ``(..., 6k)`` laid out as ``(6, k)``
    [n, sx, sy, sxx, syy, sxy] of (prediction, target) pairs; shift-invariant, so the sums may be
    of values minus any fixed per-target shift (as `bootstrap_ci`'s, centred on the global mean)."""

    def fn(s: np.ndarray) -> np.ndarray:
        r = _pearson_from_sums(s.reshape(*s.shape[:-1], 6, k))  # (..., k)
        return r[..., 0] if squeeze else r

    return fn


def ratio_of_sums_ci(
    numerators: Any,
    denominators: Any,
    groups: Any = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    min_denominator: float | None = None,
) -> BootstrapCI:
    """Percentile interval of ``sum(numerators) / sum(denominators)`` (an error rate, a mean
    probability), resampling groups with :func:`bootstrap_from_sums`.

    numerators, denominators: ``(n,)`` per item, or ``(n, L)`` for L ratios at once (e.g. one per
        layer) on the same resamples; the estimate and interval are then ``(L,)``.
    groups: ``(n,)`` each item's group; ``None``: every item is its own group.
    min_denominator: ``None`` divides the summed numerator by the summed denominator as is (0/0 is
        NaN, ignored by the quantiles); a number floors the summed denominator at it first (e.g.
        ``1``: an empty resample reads 0 instead of NaN).
    """
    num = np.asarray(numerators)
    den = np.asarray(denominators)
    if num.shape != den.shape or num.ndim not in (1, 2):
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} must be equal (n,) or (n, L)")
    n = num.shape[0]
    stats = np.stack([num, den], axis=-1).reshape(n, -1)  # (n, 2L): columns num_0, den_0, num_1, den_1, ...
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if num.ndim == 1:

        def fn(s: np.ndarray) -> np.ndarray:
            d = s[..., 1] if min_denominator is None else np.maximum(s[..., 1], min_denominator)
            return s[..., 0] / d

    else:

        def fn(s: np.ndarray) -> np.ndarray:
            d = s[..., 1::2] if min_denominator is None else np.maximum(s[..., 1::2], min_denominator)
            return s[..., 0::2] / d

    return bootstrap_from_sums(stats, groups, fn, n_boot=n_boot, alpha=alpha, seed=seed)
