"""Probing controls and uncertainty: control tasks, selectivity, utterance bootstrap.

numpy only. Conventions:
- Types, labels and groups may be any hashable numpy-sortable values (ints, strings);
  they are ordered as ``np.unique`` orders them, and that order is part of the contract
  (it fixes which random draw goes to which type or utterance).
- Bootstrap resamples GROUPS (utterances), never frames: frames of one utterance are
  strongly correlated, so resampling frames gives intervals that are far too narrow.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BootstrapCI",
    "accuracy_by_group",
    "bootstrap_ci",
    "bootstrap_from_sums",
    "bootstrap_group_sums",
    "bootstrap_indices",
    "control_task_labels",
    "group_sums",
    "macro_f1_fn",
    "macro_f1_group_sums",
    "pearson_fn",
    "r2_fn",
    "selectivity",
]


# ---------------------------------------------------------------------- control tasks
def control_task_labels(
    type_ids: Any,
    num_control_classes: int | None = None,
    seed: int = 0,
    distribution: str = "empirical",
    *,
    task_labels: Any = None,
    label_counts: Any = None,
) -> tuple[dict[Hashable, int], np.ndarray]:
    """Hewitt & Liang (2019) control task: one random label per TYPE, shared by all its tokens.

    type_ids: ``(n,)`` the type of each token (e.g. the phone or word identity of each
        frame or segment).
    task_labels: ``(n,)`` the real task's label of each token. ``None`` means the real
        task is to predict the type itself (e.g. phone identity), so its labels are
        `type_ids`.
    distribution:
        ``"empirical"`` (the paper's definition): each type's control label is drawn
        independently from the empirical token distribution of the real task's labels,
        ``P(c) = #tokens with label c / n``. Control label ``c`` is an index into
        ``np.unique(task_labels)``; the number of control classes is the real task's.
        Because a type's label does not depend on its frequency, the token-level
        distribution of control labels equals the real one in expectation (not exactly:
        a frequent type takes all its tokens to one label), which is as close to "the
        same label entropy" as a type-level mapping can get.
        ``"uniform"``: uniform over ``num_control_classes`` labels (default: the number
        of distinct real labels).
    seed: the mapping is a function of (sorted distinct types, real label distribution,
        seed) only, never of token order.
    label_counts: ``(K,)`` token counts of the real labels to draw from (e.g. those of the
        training split only, so no test label informs the control task); overrides the
        distribution of `task_labels`.

    Returns ``(mapping, control_labels)``: ``mapping[type] -> int`` and the ``(n,)`` int64
    control label of every token.
    """
    types = np.asarray(type_ids)
    if types.ndim != 1 or types.size == 0:
        raise ValueError(f"type_ids must be a non-empty 1-D array, got shape {types.shape}")
    labels = types if task_labels is None else np.asarray(task_labels)
    if labels.shape != types.shape:
        raise ValueError(f"task_labels shape {labels.shape} differs from type_ids shape {types.shape}")
    uniq_types, type_index = np.unique(types, return_inverse=True)  # (T,), (n,)
    if label_counts is None:
        _, label_counts = np.unique(labels, return_counts=True)  # (K,)
    else:
        label_counts = np.asarray(label_counts, dtype=np.float64)
        if label_counts.ndim != 1 or (label_counts < 0).any() or label_counts.sum() <= 0:
            raise ValueError("label_counts must be a 1-D array of non-negative counts with a positive sum")
    rng = np.random.default_rng(seed)
    if distribution == "empirical":
        if num_control_classes is not None and num_control_classes != label_counts.size:
            raise ValueError(
                f"distribution='empirical' uses the real task's {label_counts.size} classes; "
                f"num_control_classes={num_control_classes} needs distribution='uniform'"
            )
        probs = label_counts / label_counts.sum()  # (K,)
        per_type = rng.choice(label_counts.size, size=uniq_types.size, p=probs)  # (T,)
    elif distribution == "uniform":
        k = label_counts.size if num_control_classes is None else int(num_control_classes)
        if k < 1:
            raise ValueError(f"num_control_classes must be >= 1, got {num_control_classes}")
        per_type = rng.integers(0, k, size=uniq_types.size)  # (T,)
    else:
        raise ValueError(f"distribution must be 'empirical' or 'uniform', got {distribution!r}")
    per_type = per_type.astype(np.int64)
    mapping = dict(zip(uniq_types.tolist(), per_type.tolist(), strict=True))
    return mapping, per_type[type_index]  # (n,)


def selectivity(task_acc: Any, control_acc: Any) -> Any:
    """Selectivity (Hewitt & Liang 2019): real-task accuracy minus control-task accuracy."""
    return np.subtract(task_acc, control_acc)


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


def accuracy_by_group(correct: Any, groups: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy within each group: ``(group_ids (G,), accuracy (G,), counts (G,))``."""
    ids, sums, counts = group_sums(np.asarray(correct, dtype=np.float64), groups)
    return ids, sums / counts, counts


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


def macro_f1_fn(num_classes: int):
    """Macro F1 from summed stats ``(..., 3C)`` [tp_c, predicted_c, true_c] (see `macro_f1_stats`)."""
    C = int(num_classes)

    def fn(s: np.ndarray) -> np.ndarray:
        tp, pc, tc = s[..., :C], s[..., C : 2 * C], s[..., 2 * C :]
        present = (pc + tc) > 0
        f1 = np.where(present, 2 * tp / np.where(present, pc + tc, 1.0), 0.0)
        return f1.sum(-1) / np.maximum(present.sum(-1), 1)

    return fn


def macro_f1_group_sums(pred: Any, target: Any, group_index: Any, n_groups: int, num_classes: int) -> np.ndarray:
    """Per-group sums ``(G, 3C)`` of `macro_f1_stats`' per-item stats, without the ``(n, 3C)`` array.

    group_index ``(n,)``: each item's group in ``np.unique(groups)`` order (``return_inverse``).
    The counts are integers, so they equal ``group_sums(macro_f1_stats(...)[0], groups)`` exactly.
    """
    p, t = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    gi, C, G = np.asarray(group_index, dtype=np.int64), int(num_classes), int(n_groups)
    m = 3 * C
    hit = p == t
    out = np.bincount(gi[hit] * m + p[hit], minlength=G * m).astype(np.float64)  # tp
    out += np.bincount(gi * m + C + p, minlength=G * m)  # predicted
    out += np.bincount(gi * m + 2 * C + t, minlength=G * m)  # true
    return out.reshape(G, m)


def pearson_fn(k: int, squeeze: bool = False):
    """Pearson r per target from summed stats ``(..., 6k)`` laid out as ``(6, k)``
    [n, sx, sy, sxx, syy, sxy] of (prediction, target) pairs; shift-invariant, so the sums may be
    of values minus any fixed per-target shift (as `bootstrap_ci`'s, centred on the global mean)."""

    def fn(s: np.ndarray) -> np.ndarray:
        r = _pearson_from_sums(s.reshape(*s.shape[:-1], 6, k))  # (..., k)
        return r[..., 0] if squeeze else r

    return fn


def macro_f1_stats(pred: Any, target: Any, num_classes: int) -> tuple[np.ndarray, Any]:
    """Per-item additive stats ``(n, 3C)`` [tp_c, predicted_c, true_c] and the macro-F1 function.

    Macro F1 averages the per-class F1 over classes that occur in the targets or the
    predictions (as scikit-learn's ``f1_score(average="macro")`` and torchmetrics').
    """
    p, t = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
    C, n = int(num_classes), len(p)
    stats = np.zeros((n, 3 * C))
    rows = np.arange(n)
    stats[rows[p == t], p[p == t]] = 1.0  # tp
    stats[rows, C + p] = 1.0  # predicted
    stats[rows, 2 * C + t] = 1.0  # true
    return stats, macro_f1_fn(C)


def r2_stats(pred: Any, target: Any) -> tuple[np.ndarray, Any]:
    """Per-item stats ``(n, 1 + 3k)`` [1, y, y^2, (y - o)^2] and the per-target R^2 function
    (``1 - SS_res / SS_tot``, as torchmetrics' and scikit-learn's ``r2_score``)."""
    o = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    y = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    mu = y.mean(0)
    yc, k = y - mu, y.shape[1]  # centring keeps the sums well conditioned
    stats = np.concatenate([np.ones((len(y), 1)), yc, yc * yc, (y - o) ** 2], axis=1)
    return stats, r2_fn(k)


def r2_fn(k: int):
    """Per-target R^2 from summed `r2_stats` stats ``(..., 1 + 3k)`` (NaN for a constant target)."""

    def fn(s: np.ndarray) -> np.ndarray:
        n, sy, syy, sres = s[..., :1], s[..., 1 : 1 + k], s[..., 1 + k : 1 + 2 * k], s[..., 1 + 2 * k :]
        sst = syy - sy**2 / n
        return np.where(sst > 0, 1 - sres / np.where(sst > 0, sst, 1.0), np.nan)

    return fn
